"""Verification keys, each bound to one algorithm family (RFC 8725 section 3.1)."""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..errors import ConfigurationError

__all__ = ["KeyResolver", "StaticKeys", "algorithm_family", "unusable_key_reason"]

# What PyJWT checks on every verification, so that a key failing it would refuse every token:
# ``enforce_minimum_key_length`` wants an HMAC secret as long as the hash's output (RFC 7518
# section 3.2) and an RSA modulus of 2048 bits (NIST SP 800-131A); it checks no EC or OKP size
# (their curves fix it), but an ES* algorithm takes keys on its own curve only.
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_MIN_RSA_BITS = 2048
_EC_CURVES = {"ES256": "secp256r1", "ES256K": "secp256k1", "ES384": "secp384r1", "ES512": "secp521r1"}

_FAMILIES = {
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES256K": "EC", "ES384": "EC", "ES512": "EC",
    "EdDSA": "OKP", "Ed25519": "OKP",
}  # fmt: skip


def algorithm_family(alg: str) -> str:
    """Return the key family (``oct``, ``RSA``, ``EC``, ``OKP``) of a JWS algorithm name.

    Raises:
        ConfigurationError: for an unknown algorithm or ``none``.
    """
    try:
        return _FAMILIES[alg]
    except KeyError:
        raise ConfigurationError(
            f"unsupported JWT algorithm {alg!r}; choose from {sorted(_FAMILIES)}"
        ) from None


@runtime_checkable
class KeyResolver(Protocol):
    """**Protocol:** finds the verification key for a token's ``kid`` and ``alg``.

    Implementations must not do network I/O on the calling thread: a JWKS resolver refreshes in
    the background and answers from its cache. Returning ``None`` means "no key": the token is
    refused with a generic 401.

    Two optional attributes let :class:`~distillguard.identity.JWTVerifier` keep its cache of
    verified tokens in step without calling the resolver for each cached token:

    - ``generation`` (int): changed when a key is removed or replaced; the verifier then forgets
      every cached token.
    - ``available_until`` (float, in :func:`time.monotonic` seconds): past it ``key_for`` raises
      :class:`~distillguard.identity.KeysUnavailable`, and a cached token gets that same answer
      instead of being accepted. A resolver that goes down at once sets it to ``-math.inf``.
    """

    def key_for(self, kid: str | None, alg: str) -> Any | None:
        """Return a key usable by :func:`jwt.decode` for ``alg``, or ``None``."""
        ...


def unusable_key_reason(key: Any, algorithms: Iterable[str]) -> str | None:
    """Why PyJWT would refuse every token verified with ``key`` under ``algorithms``, or ``None``.

    An HMAC secret serves every allowed HS algorithm (the token names which), so it must be long
    enough for each; an RSA key needs 2048 bits; an EC key serves only the algorithm of its curve,
    so one allowed algorithm must use that curve. The reason names the algorithm and what it needs,
    never the key.
    """
    algs = list(algorithms)
    for alg in algs:
        family = _FAMILIES.get(alg)
        if family == "oct" and isinstance(key, bytes) and len(key) < _MIN_HMAC_BYTES[alg]:
            needed = _MIN_HMAC_BYTES[alg]
            return f"{alg} needs an HMAC secret of at least {needed} bytes (RFC 7518 section 3.2)"
        if (
            family == "RSA"
            and isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey))
            and key.key_size < _MIN_RSA_BITS
        ):
            return f"{alg} needs an RSA key of at least {_MIN_RSA_BITS} bits, not {key.key_size}"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        allowed = [a for a in algs if _FAMILIES.get(a) == "EC"]
        if allowed and not any(_EC_CURVES[a] == key.curve.name for a in allowed):
            needs = ", ".join(f"{a} needs {_EC_CURVES[a]}" for a in allowed)
            return f"an EC key on curve {key.curve.name} serves none of the allowed algorithms ({needs})"
    return None


def _family_of(key: Any) -> str:
    if isinstance(key, bytes):
        return "oct"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return "EC"
    if isinstance(
        key,
        (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, ed448.Ed448PublicKey, ed448.Ed448PrivateKey),
    ):
        return "OKP"
    raise ConfigurationError(f"unsupported key type {type(key).__name__}")


def _to_public(key: Any) -> Any:
    public = getattr(key, "public_key", None)
    return public() if callable(public) and not isinstance(key, bytes) else key


def prepare_key(key: Any, algorithms: Iterable[str]) -> tuple[str, Any]:
    """Validate ``key`` for the configured algorithms; return ``(family, prepared key)``.

    Accepts HMAC secrets (``str``/``bytes``), PEM or SSH strings/bytes, ``cryptography`` key
    objects (private keys are reduced to their public half) and JWK dicts. A key PyJWT would
    refuse on every verification (see :func:`unusable_key_reason`: too short, or an EC curve no
    allowed algorithm uses) is refused here, at startup, rather than every token later.
    """
    algs = list(algorithms)
    if isinstance(key, Mapping):
        try:
            jwk = jwt.PyJWK(dict(key))
        except jwt.PyJWTError as exc:
            raise ConfigurationError(f"invalid JWK: {exc}") from exc
        prepared: Any = jwk.key
    elif isinstance(key, (str, bytes)):
        raw = key.encode() if isinstance(key, str) else key
        asymmetric = [a for a in algs if algorithm_family(a) != "oct"]
        text = raw.strip()
        if text.startswith(_BOM):  # a PEM file saved with a byte-order mark
            text = text[len(_BOM) :].lstrip()
        jwk_text = _json_key(text)
        if jwk_text is not None:  # a JWK as JSON text: the same as the dict
            return prepare_key(jwk_text, algs)
        der = _der_key(raw)
        if der is not None:
            if not asymmetric:
                raise ConfigurationError("a DER-encoded key was given but only HMAC algorithms are allowed")
            prepared = der
        elif _base64_der_key(text):
            raise ConfigurationError(
                "the key looks like a base64-encoded public or private key without its PEM armour: "
                "give the PEM (-----BEGIN ...-----), or, for an HMAC algorithm, a secret"
            )
        elif text.startswith((b"-----BEGIN", b"ssh-", b"ecdsa-")):
            raw = text
            if not asymmetric:
                raise ConfigurationError("a PEM/SSH key was given but only HMAC algorithms are allowed")
            # Try each allowed algorithm: with ["RS256", "ES256"] an EC PEM is an ES256 key.
            failure: Exception | None = None
            for name in dict.fromkeys(asymmetric):
                try:
                    prepared = jwt.get_algorithm_by_name(name).prepare_key(raw)
                    break
                except (jwt.PyJWTError, ValueError, TypeError) as exc:
                    failure = exc
            else:
                raise ConfigurationError(f"invalid key for {asymmetric}: {failure}") from failure
        else:
            prepared = raw
    else:
        prepared = key
    prepared = _to_public(prepared)
    family = _family_of(prepared)
    if not any(algorithm_family(a) == family for a in algs):
        raise ConfigurationError(f"a {family} key was given but no allowed algorithm uses it: {algs}")
    reason = unusable_key_reason(prepared, [a for a in algs if algorithm_family(a) == family])
    if reason is None and isinstance(prepared, bytes):
        reason = guessable_secret_reason(prepared)
    if reason is not None:
        raise ConfigurationError(reason)
    return family, prepared


# Long enough for PyJWT, and published: secrets copied from documentation and tutorials, which
# token crackers (jwt_tool's jwt-common.txt, hashcat word lists) try first (RFC 8725 section 3.5).
_PUBLISHED_SECRETS = frozenset(
    {
        b"09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",  # FastAPI's JWT tutorial
        b"a-string-secret-at-least-256-bits-long",  # jwt.io's debugger
        b"supersecretkeyyoushouldnotcommittogithub",  # slim-jwt-auth's README
    }
)
_MIN_DISTINCT_BYTES = 8


def guessable_secret_reason(secret: bytes) -> str | None:
    """Why an HMAC secret of a sufficient length can still be guessed, or ``None``.

    Refused: a secret published in documentation or tutorials; a short pattern repeated (period
    of at most a quarter of its length: ``"secret" * 6``, ``"a" * 32``); fewer than 8 distinct
    bytes (``"0" * 31 + "1"``). A random secret of 32 bytes or more (``secrets.token_urlsafe(32)``,
    32 hex digits included) passes all three with certainty for practical purposes. The reason
    never quotes the secret.
    """
    if secret.strip().lower() in _PUBLISHED_SECRETS:
        return "the HMAC secret is published in documentation: generate one with secrets.token_urlsafe(48)"
    length = len(secret)
    for period in range(1, length // 4 + 1):
        if secret == (secret[:period] * (length // period + 1))[:length]:
            return "the HMAC secret is a short pattern repeated: generate one with secrets.token_urlsafe(48)"
    if len(set(secret)) < _MIN_DISTINCT_BYTES:
        return (
            f"the HMAC secret has fewer than {_MIN_DISTINCT_BYTES} distinct bytes: "
            "generate one with secrets.token_urlsafe(48)"
        )
    return None


class StaticKeys:
    """Keys configured up front, optionally by ``kid``.

    A token without ``kid`` is verified with the one key of its algorithm's family; when several
    keys of that family are configured, tokens must name theirs with ``kid``.

    Args:
        keys: one key, a sequence of keys, or a mapping of ``kid`` to key.
        algorithms: the allowed algorithms (each key must serve at least one).
    """

    def __init__(self, keys: Any, algorithms: Iterable[str]) -> None:
        algs = tuple(algorithms)
        self._by_kid: dict[str, tuple[str, Any]] = {}
        self._by_family: dict[str, list[Any]] = {}
        if isinstance(keys, Mapping) and "kty" not in keys:
            items: list[tuple[str | None, Any]] = [(str(k), v) for k, v in keys.items()]
        elif isinstance(keys, (list, tuple)):
            items = [(None, k) for k in keys]
        else:
            items = [(None, keys)]
        if not items:
            raise ConfigurationError("at least one verification key is required")
        for kid, raw in items:
            family, prepared = prepare_key(raw, algs)
            if kid is None and isinstance(raw, Mapping) and isinstance(raw.get("kid"), str):
                kid = raw["kid"]
            if kid is not None:
                self._by_kid[kid] = (family, prepared)
            self._by_family.setdefault(family, []).append(prepared)

    def key_for(self, kid: str | None, alg: str) -> Any | None:
        family = _FAMILIES.get(alg)
        if kid is not None and kid in self._by_kid:
            key_family, key = self._by_kid[kid]
            return key if key_family == family else None
        if kid is not None and self._by_kid:
            return None
        candidates = self._by_family.get(family or "", [])
        return candidates[0] if len(candidates) == 1 else None


_BOM = b"\xef\xbb\xbf"
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]{40,}")


def _json_key(text: bytes) -> dict[str, Any] | None:
    """A JWK given as JSON text, as a dict (``None``: not JSON, so a secret that happens to
    start with a brace). A JWKS document is refused: its keys are given one by one, or through
    a JWKS URL."""
    if not text.startswith(b"{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        raise ConfigurationError("a JWKS document was given as a key: give its keys one by one, or its URL")
    if isinstance(doc, dict) and "kty" in doc:
        return doc
    return None


def _der_key(raw: bytes) -> Any | None:
    """The key ``raw`` holds in DER (a public or an unencrypted private key), or ``None``."""
    if not raw.startswith(b"\x30"):  # an ASN.1 SEQUENCE
        return None
    for load in (serialization.load_der_public_key, _load_der_private):
        try:
            return load(raw)
        except Exception:  # not DER, or a key type cryptography does not support
            continue
    return None


def _load_der_private(raw: bytes) -> Any:
    return serialization.load_der_private_key(raw, password=None)


def _base64_der_key(text: bytes) -> bool:
    """Whether ``text`` is a DER key in base64 (a PEM body without its armour)."""
    if not text.startswith((b"MI", b"MF", b"MC")) or _BASE64.fullmatch(text) is None:
        return False
    try:
        der = binascii.a2b_base64(text)
    except binascii.Error:
        return False
    return _der_key(der) is not None

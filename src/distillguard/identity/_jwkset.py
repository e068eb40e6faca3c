"""Fetching and parsing a JSON Web Key Set (RFC 7517), for :class:`~distillguard.identity.JWKSKeys`.

Pure functions plus one small value type; no threads and no caching here. The fetch never
follows redirects, reads at most ``max_bytes``, and gives up after about twice ``timeout``.
Parsing keeps only public signature keys, each bound to the algorithm(s) it may verify
(RFC 8725 section 3.1: one key, one algorithm), and that PyJWT accepts for it.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from ..errors import ConfigurationError
from .keys import algorithm_family, unusable_key_reason

__all__ = ["JWKSFetchError", "KeySet", "check_url", "fetch", "make_opener", "parse"]

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_SUPPORTED = frozenset(jwt.algorithms.get_default_algorithms()) - {"none"}


class JWKSFetchError(Exception):
    """A fetch or parse failed; ``kind`` is a short label for logs and metrics
    (``timeout``, ``connection``, ``tls``, ``redirect``, ``http_503``, ``invalid_json``,
    ``no_keys``...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True, kw_only=True)
class SigningKey:
    """One usable public key from the set."""

    kid: str | None
    algorithms: frozenset[str]
    key: Any = field(repr=False)
    fingerprint: tuple[str | None, tuple[str, ...], bytes] = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable keys of one fetched JWKS, indexed by ``kid``.

    ``refused`` lists the ``(kid, reason)`` of keys left out because PyJWT would refuse every
    token verified with them (too short, or an EC key whose ``alg`` wants another curve); the
    reason names what the algorithm needs, never the key.
    """

    keys: tuple[SigningKey, ...]
    refused: tuple[tuple[str | None, str], ...] = ()
    by_kid: Mapping[str, tuple[SigningKey, ...]] = field(init=False, repr=False)
    fingerprints: frozenset[tuple[str | None, tuple[str, ...], bytes]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[str, tuple[SigningKey, ...]] = {}
        for k in self.keys:
            if k.kid is not None:
                index[k.kid] = (*index.get(k.kid, ()), k)
        object.__setattr__(self, "by_kid", index)
        object.__setattr__(self, "fingerprints", frozenset(k.fingerprint for k in self.keys))

    def find(self, kid: str | None, alg: str) -> Any | None:
        """The key for ``kid`` that may verify ``alg``. A token without ``kid`` gets the one key
        that may verify ``alg``, and nothing when several could."""
        if kid is not None:
            for k in self.by_kid.get(kid, ()):
                if alg in k.algorithms:
                    return k.key
            return None
        candidates = [k.key for k in self.keys if alg in k.algorithms]
        return candidates[0] if len(candidates) == 1 else None

    def has_kid(self, kid: str | None) -> bool:
        """Whether some key carries ``kid`` (whatever its algorithm), counting refused keys:
        fetching the set again would not make them usable."""
        return kid is not None and (kid in self.by_kid or any(kid == k for k, _ in self.refused))


def check_url(url: str) -> bool:
    """Validate a JWKS URL; return whether its host is a loopback address.

    Only ``https`` is accepted, and ``http`` for a loopback host (local tests and sidecars).

    Raises:
        ConfigurationError: for any other scheme, a missing host, or credentials in the URL.
    """
    if not isinstance(url, str):
        raise ConfigurationError("the JWKS URL must be a string")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError("the JWKS URL must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("the JWKS URL must not carry credentials; pass headers= instead")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if parts.scheme == "http" and not loopback:
        raise ConfigurationError("the JWKS URL must use https (http is accepted for loopback hosts only)")
    return loopback


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse every redirect: a 3xx becomes an ``HTTPError``."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def make_opener(loopback: bool, ssl_context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """A urllib opener that follows no redirects (and bypasses proxies for loopback hosts)."""
    handlers: list[urllib.request.BaseHandler] = [
        _NoRedirect(),
        urllib.request.HTTPSHandler(context=ssl_context or ssl.create_default_context()),
    ]
    if loopback:
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    headers: Mapping[str, str],
) -> bytes:
    """GET ``url``; return the body of a 200 response.

    Raises:
        JWKSFetchError: on any failure (never another exception for network trouble).
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            if status != 200:
                raise JWKSFetchError(f"http_{status}")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise JWKSFetchError("too_large")
                if time.monotonic() > deadline:
                    raise JWKSFetchError("timeout")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        exc.close()
        kind = "redirect" if 300 <= exc.code < 400 else f"http_{exc.code}"
        raise JWKSFetchError(kind) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        kind = "timeout" if isinstance(reason, TimeoutError) else "connection"
        raise JWKSFetchError("tls" if isinstance(reason, ssl.SSLError) else kind) from None
    except TimeoutError:
        raise JWKSFetchError("timeout") from None
    except ssl.SSLError:
        raise JWKSFetchError("tls") from None
    except (OSError, http.client.HTTPException, ValueError):
        raise JWKSFetchError("connection") from None


def _family(alg: str) -> str | None:
    if alg not in _SUPPORTED:
        return None
    try:
        return algorithm_family(alg)
    except ConfigurationError:
        return None


def _algorithms_for(jwk: Mapping[str, Any], kty: str, inferred: str) -> frozenset[str]:
    alg = jwk.get("alg")
    if alg is not None:
        return frozenset({alg})
    if kty == "RSA":
        return _RSA_ALGS
    return frozenset({inferred})


def _signing_key(jwk: Mapping[str, Any], allowed: frozenset[str] | None) -> SigningKey | None:
    use = jwk.get("use")
    if use is not None and use != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC", "OKP"):  # symmetric keys never belong in a published set
        return None
    kid = jwk.get("kid")
    alg = jwk.get("alg")
    if kid is not None and not isinstance(kid, str):
        return None
    if alg is not None and (not isinstance(alg, str) or _family(alg) != kty):
        return None
    try:
        parsed = jwt.PyJWK(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    algorithms = _algorithms_for(jwk, kty, parsed.algorithm_name)
    if allowed is not None:
        algorithms &= allowed
    if not algorithms:
        return None
    key = parsed.key
    public = key.public_key() if hasattr(key, "private_bytes") else key
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(
        kid=kid, algorithms=algorithms, key=public, fingerprint=(kid, tuple(sorted(algorithms)), spki)
    )


def parse(raw: bytes, allowed: Iterable[str] | None = None) -> KeySet:
    """Parse a JWKS document; keep the public signature keys usable with ``allowed`` algorithms.

    Keys with ``use`` other than ``sig``, ``key_ops`` without ``verify``, symmetric (``oct``)
    keys, unknown algorithms, and an ``alg`` that does not fit the key type are skipped. Keys
    PyJWT would refuse (RSA under 2048 bits, an EC ``alg`` for another curve) are skipped too,
    and listed in :attr:`KeySet.refused`.

    Raises:
        JWKSFetchError: ``invalid_json``, ``no_keys`` (no usable key at all) or
            ``refused_keys`` (the only candidates are keys PyJWT would refuse).
    """
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise JWKSFetchError("invalid_json") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JWKSFetchError("no_keys")
    allow = frozenset(allowed) if allowed is not None else None
    keys: list[SigningKey] = []
    refused: list[tuple[str | None, str]] = []
    for jwk in doc["keys"]:
        key = _signing_key(jwk, allow) if isinstance(jwk, dict) else None
        if key is None:
            continue
        reason = unusable_key_reason(key.key, sorted(key.algorithms))
        if reason is None:
            keys.append(key)
        else:
            refused.append((key.kid, reason))
    if not keys:
        raise JWKSFetchError("refused_keys" if refused else "no_keys")
    return KeySet(tuple(keys), tuple(refused))

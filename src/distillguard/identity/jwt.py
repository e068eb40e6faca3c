"""Bearer JWT verification with strict defaults (RFC 6750, RFC 7519, RFC 8725).

The allowed algorithms are configuration, never read from the token. ``iss`` and ``aud`` are
always checked; ``exp``, ``iat`` and ``sub`` are required by default. A ``jwk``, ``jku``, ``x5u`` or
``x5c`` header is refused outright, so no key is ever taken from or fetched for the token.
Every failure is an :class:`~distillguard.errors.AuthenticationError` whose ``reason`` is for
logs and tests only; clients get one generic message.

Verified tokens are cached until they expire, so a client reusing its token pays for the
signature check once (a bounded cache; an evicted token is simply verified again). The cache
follows the key resolver: it is forgotten when a key leaves the resolver's set, and while the
resolver's keys are unavailable a cached token gets the same 503 as any other. A cached
:class:`Identity` is compact: its tier, tenant and scopes are shared between the clients that have
the same ones, and its ``claims`` are read again from the verified token's payload when the app
asks for them (the token is the cache key, so it is kept anyway) rather than kept as a dict.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from time import monotonic as _monotonic
from typing import Any, TypeVar

import jwt as pyjwt

from .._text import is_text
from ..errors import AuthenticationError, ConfigurationError
from .identity import Identity, missing_scopes
from .keys import KeyResolver, StaticKeys, algorithm_family

__all__ = ["JWTConfig", "JWTVerifier", "TokenClaims"]

_KID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c")
_MAX_HEADER_BYTES = 2048
_MAX_SHARED = 1024  # distinct tiers, tenants and scope sets shared between cached identities
_logger = logging.getLogger("distillguard")
_reported: set[str] = set()  # the unexpected error types already logged (bounded)


def _report_unexpected(exc: Exception) -> None:
    """Log an error verification should never raise (a bug, in PyJWT, a key resolver or here)
    once per type, with its traceback: the request is refused with 401 either way, and a flood
    of such tokens must not flood the log. Neither the token nor the error's message (which
    may quote it) is logged: the type and where it was raised."""
    name = type(exc).__name__
    if name in _reported or len(_reported) >= 64:
        return
    _reported.add(name)
    _logger.error(
        "distillguard: token verification raised %s (a bug; the request is refused with 401, "
        "and this type is not logged again), at:\n%s",
        name,
        "".join(traceback.format_tb(exc.__traceback__)),
    )


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class JWTConfig:
    """How bearer tokens are verified.

    Args:
        algorithms: the allow-list of JWS algorithms (required; ``none`` is never allowed).
        key: the verification key(s): an HMAC secret, a PEM public key, a ``cryptography`` key,
            a JWK dict, a list of these, or a mapping of ``kid`` to key. A key PyJWT would refuse
            on every verification is refused here instead (an HMAC secret shorter than 32 bytes
            for HS256, 48 for HS384, 64 for HS512; an RSA key under 2048 bits; an EC key on a
            curve no allowed algorithm uses).
        key_resolver: instead of ``key``, an object that finds keys (for example
            :class:`~distillguard.identity.JWKSKeys`). When it raises
            :class:`~distillguard.identity.KeysUnavailable`, the guard answers 503
            ``auth_unavailable`` rather than 401. Tokens cached by the verifier are forgotten
            whenever its ``generation`` attribute (if any) changes, and get the 503 too once the
            time in its ``available_until`` attribute (if any) has passed.
        issuer: the accepted ``iss`` value(s) (required).
        audience: the accepted ``aud`` value(s) (required).
        leeway: clock-skew tolerance in seconds for ``exp``, ``nbf`` and ``iat`` (0 to 300).
        required_claims: claims that must be present.
        identity_claim: the claim that identifies the client.
        tier_claim: the claim naming the client's tier; missing means ``default_tier``.
        default_tier: the tier of tokens without a tier claim.
        tenant_claim: the claim naming the client's tenant (the issuer by default).
        limits_claim: the claim holding the client's own windows (``limits`` notation, e.g.
            ``"600/minute;20000/day"``) in place of its tier's: a customer's contract set by the
            identity provider. ``None`` (the default): the tier decides. A value that is not
            valid notation leaves the client on its tier's windows (and is logged).
        required_scopes: scopes every guarded request needs (403 ``insufficient_scope``).
        route_scopes: extra scopes by path prefix, e.g. ``{"/v1/embeddings": ("embed",)}``.
        strict_aud: require ``aud`` to be a single string equal to the audience.
        typ: when set, the token's ``typ`` header must equal it (e.g. ``"at+jwt"``, RFC 9068).
        realm: the ``realm`` of ``WWW-Authenticate`` challenges.
        cache_size: how many verified tokens are remembered (0 turns the cache off).
        max_token_bytes: longer tokens are refused before any parsing.
    """

    algorithms: Sequence[str]
    issuer: str | Sequence[str]
    audience: str | Sequence[str]
    key: Any = None
    key_resolver: KeyResolver | None = None
    leeway: float = 0.0
    required_claims: Sequence[str] = ("exp", "iat", "sub")
    identity_claim: str = "sub"
    tier_claim: str = "tier"
    default_tier: str = "default"
    tenant_claim: str = "iss"
    limits_claim: str | None = None
    required_scopes: Sequence[str] = ()
    route_scopes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    strict_aud: bool = False
    typ: str | None = None
    realm: str = "api"
    cache_size: int = 10_000
    max_token_bytes: int = 8192

    def __post_init__(self) -> None:
        if isinstance(self.algorithms, str) or not self.algorithms:
            raise ConfigurationError("JWTConfig.algorithms must be a non-empty list, e.g. ['RS256']")
        if isinstance(self.required_claims, str) or isinstance(self.required_scopes, str):
            raise ConfigurationError("JWTConfig.required_claims and required_scopes must be lists")
        if any(isinstance(v, str) for v in self.route_scopes.values()):
            raise ConfigurationError("JWTConfig.route_scopes values must be lists of scopes")
        for alg in self.algorithms:
            algorithm_family(alg)
        if not self.issuer:
            raise ConfigurationError("JWTConfig.issuer is required")
        if not self.audience:
            raise ConfigurationError("JWTConfig.audience is required")
        if (self.key is None) == (self.key_resolver is None):
            raise ConfigurationError("give exactly one of JWTConfig.key and JWTConfig.key_resolver")
        if self.key is not None:  # fail here, at startup, on keys PyJWT would refuse per token
            StaticKeys(self.key, self.algorithms)
        if not 0 <= self.leeway <= 300:
            raise ConfigurationError("JWTConfig.leeway must be between 0 and 300 seconds")
        if self.cache_size < 0 or self.max_token_bytes < 64:
            raise ConfigurationError("JWTConfig.cache_size must be >= 0 and max_token_bytes >= 64")
        if '"' in self.realm or "\\" in self.realm:
            raise ConfigurationError("JWTConfig.realm must not contain quotes or backslashes")
        if self.strict_aud and not isinstance(self.audience, str):  # PyJWT would refuse every token
            raise ConfigurationError("JWTConfig.strict_aud needs audience to be a single string")


def _media_type(typ: object) -> str | None:
    """``typ`` compared as RFC 7515 section 4.1.9 says: case-insensitive, ``application/``
    optional (``at+jwt`` == ``application/at+jwt``)."""
    if not isinstance(typ, str):
        return None
    typ = typ.lower()
    return typ[12:] if typ.startswith("application/") else typ


def _b64json(segment: str) -> Any:
    if len(segment) > _MAX_HEADER_BYTES:
        raise AuthenticationError("header_too_large")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise AuthenticationError("malformed") from exc


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return frozenset(scp)
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


class _LastClaims(threading.local):
    """The claims decoded last in this thread, so that an app reading several claims of one
    request decodes its token once."""

    token: str | None = None
    claims: Mapping[str, Any] = {}


_last_claims = _LastClaims()


class TokenClaims(Mapping[str, Any]):
    """The claims of a verified token, decoded from its payload segment when read.

    A cached :class:`Identity` holds this instead of a dict: the token (the cache key) is kept
    anyway, and a dict of its claims would add about 0.9 KB per cached client. Only tokens whose
    signature and claims were verified are ever wrapped; the payload decodes exactly as PyJWT
    decoded it. The last decoded dict is kept per thread, so reading several claims of one
    request decodes once.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    def _claims(self) -> Mapping[str, Any]:
        last = _last_claims
        if last.token is self._token:
            return last.claims
        claims = _b64json_payload(self._token.split(".")[1])
        last.token, last.claims = self._token, claims
        return claims

    def __getitem__(self, key: str) -> Any:
        return self._claims()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims())

    def __len__(self) -> int:
        return len(self._claims())

    def __repr__(self) -> str:
        return "TokenClaims(...)"  # claims are never printed (logs, tracebacks)


def _b64json_payload(segment: str) -> Mapping[str, Any]:
    claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    if not isinstance(claims, dict):  # cannot happen for a verified token
        raise AuthenticationError("malformed")
    return claims


class JWTVerifier:
    """Verifies bearer tokens against a :class:`JWTConfig`. Pure CPU, thread-safe enough for
    the GIL (the cache is a plain dict; a lost update only costs one more verification).

    Args:
        config: the verification settings.
        clock: the time source (unix seconds); injectable for tests.
    """

    def __init__(self, config: JWTConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._resolver: KeyResolver = (
            config.key_resolver
            if config.key_resolver is not None
            else StaticKeys(config.key, config.algorithms)
        )
        self._algorithms = frozenset(config.algorithms)
        self._audience = config.audience if isinstance(config.audience, str) else list(config.audience)
        self._issuer = config.issuer if isinstance(config.issuer, str) else list(config.issuer)
        self._options: Any = {
            "require": list(config.required_claims),
            "strict_aud": config.strict_aud,
            "enforce_minimum_key_length": True,
        }
        self._cache: dict[str, Identity] = {}
        self._shared: dict[object, object] = {}
        self._generation = getattr(self._resolver, "generation", 0)
        # A resolver whose keys can become unavailable (past JWKSKeys' max_stale): a cached token
        # is answered from the cache only while its `available_until` has not passed.
        self._availability: Any = self._resolver if hasattr(self._resolver, "available_until") else None

    def verify(self, token: str) -> Identity:
        """Verify ``token`` and return the caller's identity.

        Raises:
            AuthenticationError: whatever the reason; ``reason`` says which, for logs only.
        """
        generation = getattr(self._resolver, "generation", 0)
        if generation != self._generation:  # a key left the resolver's set: forget its tokens
            self._cache.clear()
            self._generation = generation
        cached = self._cache.get(token)
        availability = self._availability
        if cached is not None and (availability is None or _monotonic() <= availability.available_until):
            exp = cached.expires_at
            if exp is None or self._clock() < exp + self.config.leeway:
                return cached
            self._cache.pop(token, None)
            raise AuthenticationError("expired")
        # Not cached, or the resolver's keys are unavailable: then `_verify` gets the resolver's
        # KeysUnavailable, the answer an uncached token gets (the entry stays for when keys return).
        try:
            identity = self._verify(token)
        except AuthenticationError:
            raise
        except Exception as exc:  # fail closed: an error here must never admit the request
            _report_unexpected(exc)
            raise AuthenticationError(f"error:{type(exc).__name__}") from exc
        if self.config.cache_size and getattr(self._resolver, "generation", 0) == generation:
            if len(self._cache) >= self.config.cache_size:
                with contextlib.suppress(RuntimeError):  # another thread changed the dict
                    self._cache.pop(next(iter(self._cache), ""), None)
            self._cache[token] = identity
        return identity

    def _verify(self, token: str) -> Identity:
        config = self.config
        if len(token) > config.max_token_bytes:
            raise AuthenticationError("too_large")
        parts = token.split(".")
        if len(parts) != 3 or not parts[2]:
            raise AuthenticationError("malformed")
        header = _b64json(parts[0])
        if not isinstance(header, dict):
            raise AuthenticationError("malformed")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthenticationError("algorithm")
        if any(h in header for h in _FORBIDDEN_HEADERS):
            raise AuthenticationError("embedded_key")
        kid = header.get("kid")
        if "kid" in header and (not isinstance(kid, str) or not _KID.match(kid)):  # even `"kid": null`
            raise AuthenticationError("kid")
        if config.typ is not None and _media_type(header.get("typ")) != _media_type(config.typ):
            raise AuthenticationError("typ")
        key = self._resolver.key_for(kid, alg)
        if key is None:
            raise AuthenticationError("unknown_key")
        try:
            claims = pyjwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=config.leeway,
                options=self._options,
            )
        except pyjwt.ExpiredSignatureError as exc:
            raise AuthenticationError("expired") from exc
        except pyjwt.PyJWTError as exc:
            raise AuthenticationError(type(exc).__name__) from exc
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise AuthenticationError("malformed") from exc
        return self._identity(claims, TokenClaims(token) if config.cache_size else claims)

    def _share(self, value: _T) -> _T:
        """One shared object for each distinct tier, tenant and scope set (a bounded table:
        past ``_MAX_SHARED`` distinct values, new ones are simply not shared)."""
        shared = self._shared.get(value)
        if shared is not None:
            return shared  # type: ignore[return-value]
        if len(self._shared) < _MAX_SHARED:
            self._shared[value] = value
        return value

    def _identity(self, claims: Mapping[str, Any], kept: Mapping[str, Any]) -> Identity:
        config = self.config
        client = claims.get(config.identity_claim)
        if isinstance(client, bool) or not isinstance(client, (str, int)) or client == "":
            raise AuthenticationError("identity_claim")
        tier = claims.get(config.tier_claim)
        tenant = claims.get(config.tenant_claim)
        if not all(is_text(v) for v in (client, tier, tenant) if isinstance(v, str)):
            # a lone surrogate (a valid JSON escape) is no text: it names counters, state and
            # spans, and Redis and the exporters refuse it (one such client would trip the
            # storage's circuit breaker for every client)
            raise AuthenticationError("identity_claim")
        limits = claims.get(config.limits_claim) if config.limits_claim else None
        exp = claims.get("exp")
        share = self._share
        return Identity(
            client_id=str(client),
            tier=share(tier) if isinstance(tier, str) and tier else config.default_tier,
            scopes=share(_scopes(claims)),
            tenant=share(str(tenant))
            if isinstance(tenant, (str, int)) and not isinstance(tenant, bool)
            else None,
            limits=share(limits) if isinstance(limits, str) and 0 < len(limits) <= 256 else None,
            expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
            claims=kept,
        )

    @property
    def realm(self) -> str:
        """The ``realm`` of ``WWW-Authenticate`` challenges."""
        return self.config.realm

    @property
    def fetches_keys(self) -> bool:
        """Whether the key resolver fetches its keys (a ``prefetch`` method, as
        :class:`~distillguard.identity.JWKSKeys`)."""
        return callable(getattr(self._resolver, "prefetch", None))

    def prefetch_keys(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for the resolver's first key set (blocking; ``True`` at
        once for configured keys); whether keys are available."""
        prefetch = getattr(self._resolver, "prefetch", None)
        return bool(prefetch(timeout)) if callable(prefetch) else True

    def missing_scopes(self, identity: Identity, path: str) -> tuple[str, ...]:
        """Return the scopes ``identity`` lacks for ``path`` (empty when it has them all)."""
        return missing_scopes(identity, path, self.config.required_scopes, self.config.route_scopes)

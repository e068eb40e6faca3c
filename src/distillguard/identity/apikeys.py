"""Opaque API keys (``sk-...``) as bearer tokens, each standing for one client.

Most OpenAI-compatible APIs hand out opaque keys rather than JWTs. :class:`APIKeys` maps each
key to the identity it stands for (client id, tier, tenant, scopes), and the guard verifies a
bearer token against it like a JWT: an unknown key is a 401 ``invalid_token`` with the same
generic message, and the identity feeds the limits, the detectors and the risk policy.

Keys are held by their SHA-256 digest only (hex), so the configuration, a heap dump or a log
never holds a usable key; :meth:`APIKeys.digest` (or ``printf %s "$KEY" | sha256sum``) computes
one. A look-up hashes the presented token and reads a dictionary: nothing about a stored key
can be learnt from the timing, short of a SHA-256 preimage.

With a JWT configuration too, a token shaped like a JWT (three dot-separated parts) is
verified as a JWT and any other token as an API key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._text import is_text
from ..errors import AuthenticationError, ConfigurationError
from .identity import Identity, missing_scopes
from .jwt import JWTVerifier

__all__ = ["APIKey", "APIKeyVerifier", "APIKeys"]

_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class APIKey:
    """Whom one API key stands for.

    Attributes:
        client_id: the client (what the limits, the detectors and the risk follow).
        tier: the client's tier (its limits and detection mode).
        tenant: the organisation it belongs to (tenant limits, campaign grouping), if any.
        scopes: the scopes the key grants.
        limits: the client's own windows (``limits`` notation) in place of its tier's, e.g. a
            customer's contract; ``None``: its tier's.
    """

    client_id: str
    tier: str = "default"
    tenant: str | None = None
    scopes: Sequence[str] = ()
    limits: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id or not self.tier:
            raise ConfigurationError("an API key needs a client_id and a tier")
        if not all(is_text(v) for v in (self.client_id, self.tier, self.tenant or "")):
            # a lone surrogate: it cannot name counters in Redis
            raise ConfigurationError("an API key's client, tier and tenant must be valid text")
        if self.limits is not None:
            from ..limiting.config import parse_limits  # (the limiting package needs this one)

            if not parse_limits(self.limits):  # a ConfigurationError names what is wrong
                raise ConfigurationError("an API key's 'limits' must name at least one window")
        if isinstance(self.scopes, str):
            raise ConfigurationError("APIKey.scopes must be a list of scopes")


@dataclass(frozen=True, slots=True, kw_only=True)
class APIKeys:
    """API keys by their SHA-256 digest.

    Args:
        keys: ``{sha256 hex digest of the key: APIKey}``.
        realm: the ``realm`` of ``WWW-Authenticate`` challenges (when no JWT is configured).
        required_scopes: scopes every guarded request needs (when no JWT is configured; a JWT
            configuration's scope rules apply to both kinds of token otherwise).
        route_scopes: extra scopes by path prefix (the same).

    Raises:
        ConfigurationError: for a digest that is not 64 lower-case hex characters (a raw key
            given by mistake, which must never be kept).
    """

    keys: Mapping[str, APIKey]
    realm: str = "api"
    required_scopes: Sequence[str] = ()
    route_scopes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    _identities: Mapping[str, Identity] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        for digest, key in self.keys.items():
            if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
                raise ConfigurationError(
                    "APIKeys.keys are keyed by the SHA-256 hex digest of each key (APIKeys.digest), "
                    "never by the key itself"
                )
            if not isinstance(key, APIKey):
                raise ConfigurationError("APIKeys.keys values must be APIKey")
        if isinstance(self.required_scopes, str):
            raise ConfigurationError("APIKeys.required_scopes must be a list")
        identities = {
            digest: Identity(
                client_id=key.client_id,
                tier=key.tier,
                tenant=key.tenant,
                scopes=frozenset(key.scopes),
                limits=key.limits,
            )
            for digest, key in self.keys.items()
        }
        object.__setattr__(self, "_identities", identities)

    @staticmethod
    def digest(key: str) -> str:
        """The SHA-256 hex digest under which ``key`` is configured."""
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    @classmethod
    def from_file(cls, path: str | Path) -> APIKeys:
        """Read keys from a JSON file: ``{"<sha256 hex>": {"client": "acme-batch", "tier":
        "pro", "tenant": "acme", "scopes": ["chat"], "limits": "600/minute"}}`` (``tier``,
        ``tenant``, ``scopes`` and ``limits`` optional).

        Raises:
            ConfigurationError: when the file cannot be read or is not of that shape.
        """
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigurationError(f"the API keys file cannot be read: {exc.strerror}") from None
        except ValueError:
            raise ConfigurationError("the API keys file is not JSON") from None
        if not isinstance(doc, dict):
            raise ConfigurationError("the API keys file must hold an object of digest to client")
        keys: dict[str, APIKey] = {}
        for digest, entry in doc.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("client"), str):
                raise ConfigurationError("each API key entry needs a string 'client'")
            keys[digest] = APIKey(
                client_id=entry["client"],
                tier=str(entry.get("tier", "default")),
                tenant=entry.get("tenant") if isinstance(entry.get("tenant"), str) else None,
                scopes=tuple(_strings(entry.get("scopes", []))),
                limits=_limits(entry.get("limits")),
            )
        return cls(keys=keys)

    def identify(self, token: str) -> Identity:
        """The identity ``token`` stands for.

        Raises:
            AuthenticationError: ``unknown_api_key`` for a key that is not configured.
        """
        identity = self._identities.get(self.digest(token))
        if identity is None:
            raise AuthenticationError("unknown_api_key")
        return identity

    def __len__(self) -> int:
        return len(self.keys)


class APIKeyVerifier:
    """Verifies bearer tokens against :class:`APIKeys`, and JWT-shaped tokens with ``jwt``
    when given (the guard builds it from ``Guard(api_keys=..., jwt=...)``)."""

    __slots__ = ("jwt", "keys")

    def __init__(self, keys: APIKeys, jwt: JWTVerifier | None = None) -> None:
        self.keys = keys
        self.jwt = jwt

    @property
    def realm(self) -> str:
        """The ``realm`` of ``WWW-Authenticate`` challenges."""
        return self.jwt.realm if self.jwt is not None else self.keys.realm

    def verify(self, token: str) -> Identity:
        """The identity of ``token``.

        Raises:
            AuthenticationError: when it is neither a configured key nor a valid JWT.
        """
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token)
        return self.keys.identify(token)

    def missing_scopes(self, identity: Identity, path: str) -> tuple[str, ...]:
        """The scopes ``identity`` lacks for ``path`` (the JWT configuration's rules when there
        is one, else the keys' own)."""
        if self.jwt is not None:
            return self.jwt.missing_scopes(identity, path)
        return missing_scopes(identity, path, self.keys.required_scopes, self.keys.route_scopes)

    @property
    def fetches_keys(self) -> bool:
        """Whether the JWT keys are fetched (a JWKS)."""
        return self.jwt is not None and self.jwt.fetches_keys

    def prefetch_keys(self, timeout: float = 5.0) -> bool:
        """Wait for the JWT key set, if any (see :meth:`JWTVerifier.prefetch_keys`)."""
        return self.jwt.prefetch_keys(timeout) if self.jwt is not None else True


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError("API key scopes must be a list of strings")
    return value


def _limits(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError("an API key's 'limits' must be a string such as '600/minute'")
    return value

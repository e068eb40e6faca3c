"""What the adapters extract from a request before the core decides (pure data)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from .identity import Identity

__all__ = ["HTTP_TOKEN", "GuardRequest", "address_key", "bearer_token", "well_formed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardRequest:
    """One HTTP request, independent of ASGI or WSGI.

    Attributes:
        method: the HTTP method.
        path: the request path.
        authorization: the ``Authorization`` header, if any.
        content_type: the ``Content-Type`` header ('' when absent).
        body: the whole request body (already capped by the adapter).
        client_address: the peer address (use ProxyFix or uvicorn's proxy headers to set it
            from a trusted proxy; distillguard never parses ``X-Forwarded-For`` itself).
        user_agent: the ``User-Agent`` header, if any.
        timestamp: when the request arrived (unix seconds).
        identity: an identity already established upstream (offline replay, a gateway behind
            an authenticating proxy); when set, no token is verified.
    """

    method: str
    path: str
    authorization: str | None
    content_type: str
    body: bytes
    client_address: str | None
    user_agent: str | None
    timestamp: float
    identity: Identity | None = None


_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP token (RFC 9110): a header field name, a WebSocket subprotocol."""
"""RFC 6750 ``b64token``: what a bearer token may be made of (a JWT is)."""


def well_formed(token: str) -> bool:
    """Whether ``token`` is an RFC 6750 ``b64token``: not empty, and none of the spaces or
    commas that two credentials joined into one header (``Bearer a, Bearer b``) bring."""
    return _B64TOKEN.fullmatch(token) is not None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` when the header is
    missing or uses another scheme. An empty token is returned as ``""`` (malformed: see
    :func:`well_formed`)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def address_key(address: str | None) -> str:
    """The key that counts requests by client address: an IPv4 address as it is; an IPv6
    address by its /64 network (one subscriber's allocation: rotating through it must not buy
    fresh quota), an IPv4-mapped IPv6 address as its IPv4 address; anything else as given.
    Used for anonymous clients and failed-authentication windows."""
    if not address:
        return "unknown"
    if ":" not in address:
        return address
    return _ipv6_key(address)


@lru_cache(maxsize=4096)
def _ipv6_key(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])  # no zone index in the key
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))

"""What the adapters extract from a request before the core decides (pure data)."""

from __future__ import annotations

from dataclasses import dataclass

from .identity import Identity

__all__ = ["GuardRequest", "bearer_token"]


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


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` when the header is
    missing or uses another scheme. An empty token is returned as ``""`` (an invalid token)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()

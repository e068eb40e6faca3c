"""The verified caller."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Identity", "missing_scopes"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A verified client, as the app can read it from the ASGI scope or WSGI environ.

    Attributes:
        client_id: the configured identity claim (``sub`` by default), or ``ip:<address>`` for
            anonymous traffic when no JWT is configured.
        tier: the configured tier claim (``tier`` by default), or the default tier.
        scopes: the token's scopes (``scope`` as a space-separated string, or ``scp`` as a list).
        tenant: the tenant the client belongs to (the issuer by default).
        limits: the client's own windows (``limits`` notation, e.g. ``"600/minute;20000/day"``)
            in place of its tier's, from the token's ``JWTConfig.limits_claim`` or its API key;
            ``None``: its tier's.
        expires_at: the token's ``exp`` (unix seconds), or ``None`` for anonymous clients.
        claims: the verified claims, for the app; distillguard never exports them.
        anonymous: whether the client was identified by address rather than a token.
    """

    client_id: str
    tier: str = "default"
    scopes: frozenset[str] = frozenset()
    tenant: str | None = None
    limits: str | None = None
    expires_at: float | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    anonymous: bool = False


def missing_scopes(
    identity: Identity, path: str, required: Sequence[str], by_route: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The scopes ``identity`` lacks for ``path``: ``required`` on every path, plus those of
    each ``by_route`` prefix ``path`` starts with (empty when it has them all)."""
    needed = list(required)
    for prefix, scopes in by_route.items():
        if path.startswith(prefix):
            needed.extend(scopes)
    return tuple(s for s in needed if s not in identity.scopes)

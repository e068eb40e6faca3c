"""Limit rules: extra windows by tier, route and model, counted in requests or tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from limits import RateLimitItem

from ..errors import ConfigurationError

__all__ = ["TOKEN_UNITS", "LimitRule", "Unit"]

Unit = Literal["requests", "tokens", "input_tokens", "output_tokens"]
"""What a window counts."""
TOKEN_UNITS = ("tokens", "input_tokens", "output_tokens")
"""The units counted in model tokens (estimated, then reconciled with the response's usage)."""

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitRule:
    """Extra windows that apply to the requests matching ``tiers``, ``routes`` and ``models``.

    Args:
        name: a short name (letters, digits, ``._-``); it prefixes the policy names shown in the
            RateLimit fields and the counters' keys.
        limits: the windows in ``limits`` notation, e.g. ``"100000/minute;2000000/day"``.
        unit: ``"requests"`` (each request costs 1) or ``"tokens"`` (each request is charged its
            estimated prompt tokens plus ``max_tokens`` x ``n``, then reconciled with the
            response's ``usage``); ``"input_tokens"`` or ``"output_tokens"`` count one side
            only (the prompt's, or the completion's: what a distiller harvests), estimated and
            reconciled the same way. A request that cannot use any token of its rule's side
            (an embedding under an output rule) is neither charged nor refused by it.
        tiers: the tiers the rule applies to (all when empty).
        routes: paths the rule applies to: exact, or a prefix when ending in ``/`` (all when empty).
        models: the request's ``model`` values the rule applies to (all when empty). With
            models listed, each model is counted separately.
        per: ``"client"`` (one counter per client), ``"tenant"`` (one counter shared by every
            client of a tenant: an aggregate limit) or ``"all"`` (one counter for every client:
            the capacity of a route or a model, e.g. a campaign's accounts together). A shared
            counter is never disclosed in the RateLimit fields (its remaining count would tell
            a client how much the others use), whatever ``headers`` says.
        strategy: the ``limits`` strategy; token windows use ``"fixed-window"`` (the only one
            whose refunds are exact). Request windows default to ``LimitConfig.strategy``.
        headers: disclose these windows in the RateLimit fields.
    """

    name: str
    limits: str
    unit: Unit = "requests"
    tiers: Sequence[str] = ()
    routes: Sequence[str] = ()
    models: Sequence[str] = ()
    per: Literal["client", "tenant", "all"] = "client"
    strategy: str | None = None
    headers: bool = True

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(f"LimitRule.name {self.name!r} must match {_NAME.pattern}")
        if self.unit not in ("requests", *TOKEN_UNITS):
            raise ConfigurationError(
                "LimitRule.unit must be 'requests', 'tokens', 'input_tokens' or 'output_tokens'"
            )
        if self.per not in ("client", "tenant", "all"):
            raise ConfigurationError("LimitRule.per must be 'client', 'tenant' or 'all'")
        for group in (self.tiers, self.routes, self.models):
            if isinstance(group, str):
                raise ConfigurationError(f"LimitRule {self.name!r}: tiers/routes/models must be lists")
        if self.unit in TOKEN_UNITS and self.strategy not in (None, "fixed-window"):
            raise ConfigurationError(
                f"LimitRule {self.name!r}: token windows use the fixed window (refunds are exact "
                "only there; a moving window stores one entry per token)"
            )

    def matches(self, tier: str, path: str, model: str | None) -> bool:
        """Whether a request of ``tier`` to ``path`` for ``model`` falls under this rule."""
        if self.tiers and tier not in self.tiers:
            return False
        if self.models and model not in self.models:
            return False
        if self.routes:
            return any(path == r or (r.endswith("/") and path.startswith(r)) for r in self.routes)
        return True


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its windows parsed."""

    rule: LimitRule
    windows: tuple[tuple[str, RateLimitItem], ...]
    strategy: str

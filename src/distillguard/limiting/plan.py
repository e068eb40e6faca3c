"""The limit plan: which counters one request is charged against."""

from __future__ import annotations

from dataclasses import dataclass

from limits import RateLimitItem

from ..identity import Identity
from .config import LimitConfig, parse_limits

__all__ = ["LimitCheck", "LimitOutcome", "LimitPlan", "policy_name"]


def policy_name(item: RateLimitItem) -> str:
    """A stable, readable name for a window, e.g. ``"60-per-1-minute"``."""
    return f"{item.amount}-per-{item.multiples}-{item.GRANULARITY.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitCheck:
    """One counter to charge.

    Attributes:
        policy: the policy's name, as shown in ``RateLimit-Policy``.
        item: the ``limits`` window.
        key: the identifiers of the counter (e.g. ``("client", tier, client_id)``).
        cost: how much the request costs in the window's unit.
        headers: whether this window is disclosed in the RateLimit fields.
    """

    policy: str
    item: RateLimitItem
    key: tuple[str, ...]
    cost: int = 1
    headers: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitOutcome:
    """The result of charging one :class:`LimitCheck`.

    Attributes:
        check: the check.
        allowed: whether the request fit in the window.
        remaining: what is left in the window after this request.
        reset_at: when more quota frees up (unix seconds).
        error: a storage failure message, when the storage could not be reached.
    """

    check: LimitCheck
    allowed: bool
    remaining: int
    reset_at: float
    error: str | None = None


class LimitPlan:
    """Compiles a :class:`LimitConfig` once and plans the checks of each request."""

    def __init__(self, config: LimitConfig) -> None:
        self.config = config
        self._default = self._compile(parse_limits(config.default))
        self._tiers = {tier: self._compile(parse_limits(text)) for tier, text in config.tiers.items()}
        self._cache: dict[tuple[str, str], tuple[LimitCheck, ...]] = {}

    def _compile(self, items: tuple[RateLimitItem, ...]) -> tuple[tuple[str, RateLimitItem], ...]:
        return tuple((policy_name(item), item) for item in items)

    def checks_for(self, identity: Identity) -> tuple[LimitCheck, ...]:
        """The request-count checks of ``identity`` (cached per tier and client)."""
        cache_key = (identity.tier, identity.client_id)
        checks = self._cache.get(cache_key)
        if checks is None:
            windows = self._tiers.get(identity.tier, self._default)
            key = ("c", identity.tier, identity.client_id)
            checks = tuple(
                LimitCheck(policy=name, item=item, key=key, headers=self.config.headers)
                for name, item in windows
            )
            if len(self._cache) >= 50_000:
                self._cache.clear()
            self._cache[cache_key] = checks
        return checks

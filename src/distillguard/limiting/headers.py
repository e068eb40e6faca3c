"""The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and ``Retry-After``.

Both fields are RFC 9651 Structured-Field Lists whose items are policy names (Strings)::

    RateLimit-Policy: "60-per-1-minute";q=60;w=60, "1000-per-1-day";q=1000;w=86400
    RateLimit: "60-per-1-minute";r=59;t=60, "1000-per-1-day";r=999;t=86400
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .plan import LimitOutcome

__all__ = ["ratelimit_fields", "retry_after"]


def _seconds_until(reset_at: float, now: float) -> int:
    return max(0, math.ceil(reset_at - now))


def ratelimit_fields(outcomes: Iterable[LimitOutcome], now: float) -> list[tuple[str, str]]:
    """Render ``RateLimit-Policy`` and ``RateLimit`` for the disclosed windows (may be empty)."""
    policies: list[str] = []
    states: list[str] = []
    for outcome in outcomes:
        check = outcome.check
        if not check.headers or outcome.error is not None:
            continue
        policies.append(f'"{check.policy}";q={check.item.amount};w={check.item.get_expiry()}')
        states.append(
            f'"{check.policy}";r={max(0, outcome.remaining)};'
            f"t={min(check.item.get_expiry(), _seconds_until(outcome.reset_at, now))}"
        )
    if not policies:
        return []
    return [("ratelimit-policy", ", ".join(policies)), ("ratelimit", ", ".join(states))]


def retry_after(outcomes: Iterable[LimitOutcome], now: float) -> int:
    """Seconds until every refusing window has room again (at least 1)."""
    waits = [_seconds_until(o.reset_at, now) for o in outcomes if not o.allowed]
    return max([1, *waits])

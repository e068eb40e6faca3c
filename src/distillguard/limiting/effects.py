"""Effects the limit stages ask an adapter's performer to carry out (besides ``HitLimit``)."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import LimitCheck

__all__ = ["ChargeLimit", "HitLimits", "RefundLimit"]


@dataclass(frozen=True, slots=True)
class HitLimits:
    """Effect: charge every window of a request. The driver answers a tuple of
    :class:`~distillguard.limiting.plan.LimitOutcome` (one per window charged or refused, in
    order; it may stop at the first refusal), or the exception it hit. On a single-node Redis
    this is one round trip and all or nothing."""

    checks: tuple[LimitCheck, ...]
    now: float


@dataclass(frozen=True, slots=True)
class ChargeLimit:
    """Effect: add ``amount`` to the window of ``check`` even past its limit (usage beyond the
    estimate). ``mode`` is where the request was first charged (``LimitOutcome.mode``)."""

    check: LimitCheck
    amount: int
    mode: str = "primary"


@dataclass(frozen=True, slots=True)
class RefundLimit:
    """Effect: take ``amount`` back from the window of ``check`` (quota a request did not use)."""

    check: LimitCheck
    amount: int
    mode: str = "primary"

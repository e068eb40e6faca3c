"""Effects the limit stages ask an adapter's performer to carry out (besides ``HitLimit``)."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import LimitCheck, LimitOutcome

UNREAD: object = object()
"""The state of :class:`Charged` when the windows' round trip could not read it (the caller reads
it on its own)."""

__all__ = ["UNREAD", "ChargeLimit", "Charged", "HitLimits", "LoadState", "RefundLimit", "SaveState"]


@dataclass(frozen=True, slots=True)
class HitLimits:
    """Effect: charge every window of a request. The driver answers a tuple of
    :class:`~distillguard.limiting.plan.LimitOutcome` (one per window charged or refused, in
    order; it may stop at the first refusal), or the exception it hit. On a single-node Redis
    this is one round trip and all or nothing.

    With ``state``, the client's detector state is read as well (in the same round trip when
    the windows are charged by the script) and the driver answers a :class:`Charged`."""

    checks: tuple[LimitCheck, ...]
    now: float
    state: LoadState | None = None


@dataclass(frozen=True, slots=True)
class Charged:
    """The answer to :class:`HitLimits` with a ``state`` to read: the windows' outcomes, and the
    state as :class:`LoadState` answers it (or :data:`UNREAD`)."""

    outcomes: tuple[LimitOutcome, ...]
    state: object


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


@dataclass(frozen=True, slots=True)
class LoadState:
    """Effect: read the detector state stored under ``key`` unless its stamp is ``known``. The
    driver answers ``(stamp, data)``, ``None`` (up to date, nothing stored, or a storage that
    shares no state), or the exception it hit."""

    key: str
    known: str


@dataclass(frozen=True, slots=True)
class SaveState:
    """Effect: store ``data`` under ``key`` with ``stamp``, for ``ttl_ms`` milliseconds, unless
    the stored stamp is no longer ``expected`` (the one read before the detectors ran). The
    driver answers ``True`` when the storage took it, the stored ``(stamp, data)`` when another
    replica wrote in between, or ``False`` (or the exception) when the storage did not answer."""

    key: str
    stamp: str
    data: str
    ttl_ms: int
    expected: str = ""

"""Effects the limit stages ask an adapter's performer to carry out (besides ``HitLimit``)."""

from __future__ import annotations

from dataclasses import dataclass

from .plan import LimitCheck, LimitOutcome

UNREAD: object = object()
"""The state of :class:`Charged` when the windows' round trip could not read it (the caller reads
it on its own)."""

__all__ = [
    "UNREAD",
    "AcquireSlot",
    "ChargeLimit",
    "Charged",
    "ForgetClient",
    "HitLimits",
    "JoinRecord",
    "JoinRecords",
    "LoadState",
    "RefundLimit",
    "ReleaseSlot",
    "RenewSlot",
    "SaveState",
]


@dataclass(frozen=True, slots=True)
class HitLimits:
    """Effect: charge every window of a request. The driver answers a tuple of
    :class:`~distillguard.limiting.plan.LimitOutcome` (one per window, in order; the windows
    after a refusal are read, not charged), or the exception it hit. On a single-node Redis
    this is one round trip and all or nothing.

    With ``state``, the client's detector state is read as well (in the same round trip when
    the windows are charged by the script) and the driver answers a :class:`Charged`. With
    ``charge`` false the windows are only read."""

    checks: tuple[LimitCheck, ...]
    now: float
    state: LoadState | None = None
    charge: bool = True


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
class ForgetClient:
    """Effect: clear the windows of ``clear`` and delete the detector state stored under
    ``state`` (``None``: none), then add one to the window of ``count`` (``None``: none), on
    the shared storage. The driver answers ``True`` when done there, ``False`` when the storage
    shares nothing (memory), or the exception it hit."""

    clear: tuple[LimitCheck, ...]
    state: str | None
    count: LimitCheck | None


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


@dataclass(frozen=True, slots=True)
class JoinRecord:
    """One member's visit to a record that detectors of every replica share (a campaign
    detector's template family): ``member`` was seen at ``seen`` (unix seconds); the record
    keeps the members seen within ``horizon`` seconds of its latest visit, at most ``cap``."""

    key: str
    member: str
    seen: float
    horizon: float
    cap: int


@dataclass(frozen=True, slots=True)
class JoinRecords:
    """Effect: add each join to its shared record. The driver answers a list with each
    record's members after the join, ``[(member, seen), ...]`` in the order of ``joins``,
    ``None`` (a storage that shares nothing), or the exception it hit."""

    joins: tuple[JoinRecord, ...]


@dataclass(frozen=True, slots=True)
class AcquireSlot:
    """Effect: add the lease ``token`` (``lease_ms`` long) to the in-flight set ``key`` if it
    holds fewer than ``cap`` live leases. The driver answers ``"primary"`` (taken), ``"full"``
    (the cap is reached), or, when the storage is down, the outage policy's mode:
    ``"fallback"`` (count in process instead), ``"open"`` (admit uncounted) or ``"closed"``."""

    key: str
    cap: int
    lease_ms: int
    token: str


@dataclass(frozen=True, slots=True)
class RenewSlot:
    """Effect: extend the lease ``token`` of ``key`` to ``lease_ms`` from now (if it is still
    there). The answer is not used: a lease that could not be renewed runs out."""

    key: str
    token: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseSlot:
    """Effect: remove the lease ``token`` from ``key``. The answer is not used: a lease that
    could not be removed runs out."""

    key: str
    token: str

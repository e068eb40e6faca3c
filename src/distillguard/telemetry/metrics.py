"""The guard's metrics, through the OpenTelemetry metrics API.

Instruments are created once per meter provider, when the first guard using it is built, from
the ``meter_provider`` given to :class:`~distillguard.Guard` (the global one otherwise); guards
sharing a provider share them and their counts are summed. Recording is kept off the request's
critical path, because one synchronous SDK measurement costs several microseconds:

* counters are tallied in plain integers under a lock and reported through *observable*
  counters (cumulative sums, exactly what a synchronous counter would export);
* histogram values are queued (a bounded deque) and recorded into the histograms when a
  metric reader collects, which the SDK does before it reads any instrument. Until a reader
  has collected once, with the API's default or no-op provider, the queue stops at 4,096 values
  (an app without a metrics SDK holds no more).

Every metric attribute is low-cardinality: actions, detector names, verdicts, limiter outcomes
and exception type names. Client ids, paths and models never appear on metrics.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from . import names
from .instruments import instruments_for

if TYPE_CHECKING:
    from ..decision import Decision

__all__ = ["ClientTracker", "GuardMetrics"]

logger = logging.getLogger("distillguard.telemetry")

_QUEUE = 200_000  # values kept between two collections (older ones are dropped past it)
_IDLE_QUEUE = 4_096  # values kept while no reader has ever collected (maybe none ever will)
_MAX_ERROR_TYPES = 32
_FALLBACK_OUTCOMES = ("local_fallback", "fail_open", "fail_closed")
_STATE_OUTCOMES = (
    "loaded",
    "saved",
    "rejected",
    "oversized",
    "failed",
    "retried",
    "records",
    "records_failed",
)


@runtime_checkable
class ClientTracker(Protocol):
    """**Protocol:** optional; a detector (or risk engine) that keeps per-client state reports
    how many clients it currently tracks, for the ``distillguard.clients.tracked`` gauge.

    ``tracked_clients`` is called from the metric reader's thread at each collection: it must be
    cheap, thread-safe and must not raise (an exception is logged and the value skipped).
    """

    name: str

    def tracked_clients(self) -> int:
        """How many clients this component holds state for right now."""
        ...


class GuardMetrics:
    """One guard's cheap per-request recording, reported through the instruments of its meter
    provider (created once per provider, when the first guard using it is built).

    Args:
        meter_provider: the provider (the global one when ``None``).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self._shared = shared = instruments_for(provider)
        shared.members.add(self)
        self._score = shared.score
        self._duration = shared.duration
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, bool], int] = {}
        self._verdicts: dict[tuple[str, str], int] = {}
        self._limiter_errors: dict[str, int] = {}
        self._guard_errors: dict[tuple[str, str], int] = {}  # (error type, action) -> requests
        self._unmarked: dict[str, int] = {}
        self._ended: dict[str, int] = {}
        self._releases: dict[str, int] = {}
        self._scores: deque[float] = deque(maxlen=_QUEUE)
        self._durations: deque[tuple[float, Mapping[str, Any]]] = deque(maxlen=_QUEUE)
        self._duration_attrs: dict[str, Mapping[str, Any]] = {}
        self._trackers: list[tuple[str, Callable[[], int]]] = []
        self._limiter_stats: Callable[[], object | None] | None = None
        self._state_share: Callable[[], object | None] | None = None
        self._thresholds: tuple[float, float, float] = (0.5, 0.75, 0.9)

    # -- wiring (construction time) ------------------------------------------------------------

    def set_thresholds(self, flag: float, degrade: float | None, block: float | None) -> None:
        """The policy's thresholds, to turn each detector's score into a verdict."""
        inf = float("inf")
        self._thresholds = (flag, inf if degrade is None else degrade, inf if block is None else block)

    def track_clients(self, name: str, source: Callable[[], int]) -> None:
        """Report ``source()`` on the tracked-clients gauge, attributed to ``name``."""
        self._trackers.append((name, source))

    def use_limiter_stats(self, source: Callable[[], object | None]) -> None:
        """Read limiter fallbacks from ``source()`` (an object with ``local_fallback``,
        ``fail_open`` and ``fail_closed`` counters) instead of counting ``limiter:`` errors."""
        self._limiter_stats = source

    def use_state_share(self, source: Callable[[], object | None]) -> None:
        """Report the shared detector state's exchanges from ``source()`` (an object with
        ``loaded``, ``saved``, ``rejected``, ``oversized``, ``failed``, ``retried``, ``records`` and
        ``records_failed`` counters, or ``None``)."""
        self._state_share = source

    # -- per request (hot path) ----------------------------------------------------------------

    def record_decision(self, decision: Decision) -> None:
        """Count ``decision`` (a few dict updates; no SDK call)."""
        key = (decision.action.value, decision.shadow)
        results = decision.results
        errors = decision.errors
        with self._lock:
            counts = self._decisions
            counts[key] = counts.get(key, 0) + 1
            if results:
                flag, degrade, block = self._thresholds
                verdicts = self._verdicts
                for result in results:
                    score = result.score
                    if errors and f"detector:{result.detector}" in errors:
                        verdict = "error"
                    elif score >= block:
                        verdict = "block"
                    elif score >= degrade:
                        verdict = "degrade"
                    elif score >= flag:
                        verdict = "flag"
                    else:
                        verdict = "allow"
                    vkey = (result.detector, verdict)
                    verdicts[vkey] = verdicts.get(vkey, 0) + 1
            if errors:
                limiter = self._limiter_errors
                for error in errors:
                    if error.startswith("limiter:"):
                        _count(limiter, error[8:], "other")
                    elif error.startswith("guard:"):
                        action = decision.action.value
                        _count(self._guard_errors, (error[6:], action), ("other", action))
        if results:
            scores = self._scores
            if self._shared.collecting or len(scores) < _IDLE_QUEUE:
                scores.append(decision.score)

    def record_unmarked(self, reason: str) -> None:
        """Count an answer the watermark gave up on (``reason``: ``too_long``)."""
        self._bump(self._unmarked, reason)

    def record_stream_ended(self, reason: str) -> None:
        """Count a streamed answer the guard ended (``reason``: ``risk:penalty_box``)."""
        self._bump(self._ended, reason)

    def record_release(self, scope: str) -> None:
        """Count a release of a client (``scope``: ``shared`` or ``process`` for one made
        here, ``seen`` for one another process made that this one read and applied)."""
        self._bump(self._releases, scope)

    def _bump(self, counts: dict[str, int], reason: str) -> None:
        with self._lock:
            counts[reason] = counts.get(reason, 0) + 1

    def record_duration(self, seconds: float, action: str) -> None:
        """Queue one overhead measurement (recorded into the histogram at collection)."""
        attrs = self._duration_attrs.get(action)
        if attrs is None:
            attrs = self._duration_attrs.setdefault(action, {names.ATTR_DECISION: action})
        durations = self._durations
        if self._shared.collecting or len(durations) < _IDLE_QUEUE:
            durations.append((seconds, attrs))

    def flush(self) -> None:
        """Record every queued histogram value now (metric readers call this through the
        observable instruments' callbacks before each collection)."""
        scores, durations = self._scores, self._durations
        score, duration = self._score, self._duration
        try:
            while True:
                score.record(scores.popleft())
        except IndexError:
            pass
        try:
            while True:
                seconds, attrs = durations.popleft()
                duration.record(seconds, attrs)
        except IndexError:
            pass

    # -- read by the shared instruments (metric reader's thread) -------------------------------

    def decision_counts(self) -> list[tuple[tuple[str, bool], int]]:
        """``((action, shadow), count)`` so far."""
        with self._lock:
            return list(self._decisions.items())

    def verdict_counts(self) -> list[tuple[tuple[str, str], int]]:
        """``((detector, verdict), count)`` so far."""
        with self._lock:
            return list(self._verdicts.items())

    def fallback_counts(self) -> list[tuple[tuple[str, str | None], int]]:
        """``((outcome, error type or None), count)``: from the limiter statistics when there
        are some, else from the decisions' ``limiter:`` errors (as ``fail_open``)."""
        stats = None
        if self._limiter_stats is not None:
            try:
                stats = self._limiter_stats()
            except Exception:
                logger.exception("distillguard: reading the limiter stats failed")
        if stats is not None:
            return [((outcome, None), int(getattr(stats, outcome, 0))) for outcome in _FALLBACK_OUTCOMES]
        with self._lock:
            return [(("fail_open", kind), count) for kind, count in self._limiter_errors.items()]

    def guard_error_counts(self) -> list[tuple[tuple[str, str], int]]:
        """``((error type, action taken), count)`` of the guard's own failures so far (the
        action follows ``on_internal_error``: ``allow`` or ``unavailable``)."""
        with self._lock:
            return list(self._guard_errors.items())

    def unmarked_counts(self) -> list[tuple[str, int]]:
        """``(reason, count)`` of the answers the watermark gave up on so far."""
        return self._read(self._unmarked)

    def ended_counts(self) -> list[tuple[str, int]]:
        """``(reason, count)`` of the streamed answers the guard ended so far."""
        return self._read(self._ended)

    def release_counts(self) -> list[tuple[str, int]]:
        """``(scope, count)`` of the releases made or applied so far."""
        return self._read(self._releases)

    def _read(self, counts: dict[str, int]) -> list[tuple[str, int]]:
        with self._lock:
            return list(counts.items())

    def state_counts(self) -> list[tuple[str, int]]:
        """``(outcome, count)`` of the shared detector state's exchanges (none when the state
        is not shared)."""
        share = self._state_share() if self._state_share is not None else None
        if share is None:
            return []
        return [(outcome, int(getattr(share, outcome, 0))) for outcome in _STATE_OUTCOMES]

    def tracked_counts(self) -> list[tuple[str, int]]:
        """``(name, clients)`` of each tracker that answered."""
        out = []
        for name, source in self._trackers:
            try:
                out.append((name, int(source())))
            except Exception:
                logger.exception("distillguard: %s.tracked_clients() failed", name)
        return out


_Key = TypeVar("_Key")


def _count(counts: dict[_Key, int], key: _Key, other: _Key) -> None:
    """Add one to ``counts[key]``; a new key past :data:`_MAX_ERROR_TYPES` kinds counts as
    ``other`` (the exception types a bug raises must not grow the metric without bound)."""
    if key not in counts and len(counts) >= _MAX_ERROR_TYPES:
        key = other
    counts[key] = counts.get(key, 0) + 1

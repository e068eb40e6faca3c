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
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._version import __version__
from . import names

if TYPE_CHECKING:
    from ..decision import Decision

__all__ = ["ClientTracker", "GuardMetrics"]

logger = logging.getLogger("distillguard.telemetry")

_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0)
_DURATION_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.000075,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)
_QUEUE = 200_000  # values kept between two collections (older ones are dropped past it)
_IDLE_QUEUE = 4_096  # values kept while no reader has ever collected (maybe none ever will)
_MAX_ERROR_TYPES = 32
_FALLBACK_OUTCOMES = ("local_fallback", "fail_open", "fail_closed")


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


class _Instruments:
    """The instruments of one meter provider, shared by every guard that uses it (creating
    them twice would make the SDK warn and export two streams with the same name). Observable
    callbacks sum the guards' tallies; a guard that is garbage-collected drops out."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = metrics.get_meter("distillguard", __version__, provider)
        # an SDK provider will collect; the API's default (proxy) or no-op one may never do
        self.collecting = not isinstance(provider, metrics.NoOpMeterProvider) and type(
            provider
        ).__name__ not in ("_ProxyMeterProvider", "ProxyMeterProvider")
        self.members: weakref.WeakSet[GuardMetrics] = weakref.WeakSet()
        meter.create_observable_counter(
            names.METRIC_DECISIONS,
            callbacks=[self._observe_decisions],
            unit="{request}",
            description="Guarded requests by decision (action) and shadow mode.",
        )
        meter.create_observable_counter(
            names.METRIC_DETECTOR_VERDICTS,
            callbacks=[self._observe_verdicts],
            unit="{request}",
            description="Detector results by detector and by the verdict its own score reached.",
        )
        meter.create_observable_counter(
            names.METRIC_LIMITER_FALLBACKS,
            callbacks=[self._observe_fallbacks],
            unit="{request}",
            description="Limit decisions taken without the shared limit storage.",
        )
        meter.create_observable_gauge(
            names.METRIC_CLIENTS,
            callbacks=[self._observe_clients],
            unit="{client}",
            description="Clients the detectors currently hold state for.",
        )
        self.score = meter.create_histogram(
            names.METRIC_SCORE,
            unit="1",
            description="Aggregate detector score of requests that reached the detectors.",
            explicit_bucket_boundaries_advisory=_SCORE_BUCKETS,
        )
        self.duration = meter.create_histogram(
            names.METRIC_DURATION,
            unit="s",
            description="Time the guard itself spent on a request (deciding and settling), app excluded.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )

    def _members(self) -> list[GuardMetrics]:
        self.collecting = True
        members = list(self.members)
        for member in members:
            member.flush()
        return members

    @staticmethod
    def _sum(parts: Iterable[Iterable[tuple[Any, int]]]) -> dict[Any, int]:
        totals: dict[Any, int] = {}
        for part in parts:
            for key, count in part:
                totals[key] = totals.get(key, 0) + count
        return totals

    def _observe_decisions(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._sum(m.decision_counts() for m in self._members())
        out = []
        for (action, shadow), count in totals.items():
            attrs: dict[str, Any] = {names.ATTR_DECISION: action}
            if shadow:
                attrs[names.ATTR_SHADOW] = True
            out.append(Observation(count, attrs))
        return out

    def _observe_verdicts(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._sum(m.verdict_counts() for m in self._members())
        return [
            Observation(count, {names.ATTR_DETECTOR: detector, names.ATTR_DETECTOR_VERDICT: verdict})
            for (detector, verdict), count in totals.items()
        ]

    def _observe_fallbacks(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._sum(m.fallback_counts() for m in self._members())
        out = []
        for (outcome, kind), count in totals.items():
            attrs = {names.ATTR_LIMITER_OUTCOME: outcome}
            if kind is not None:
                attrs[names.ERROR_TYPE] = kind
            out.append(Observation(count, attrs))
        return out

    def _observe_clients(self, options: CallbackOptions) -> Iterable[Observation]:
        members = self._members()
        totals = self._sum(m.tracked_counts() for m in members)
        if not totals:
            return [Observation(0)]
        return [Observation(count, {names.ATTR_DETECTOR: name}) for name, count in totals.items()]


_SHARED: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def _instruments(provider: MeterProvider) -> _Instruments:
    with _SHARED_LOCK:
        try:
            shared = _SHARED.get(provider)
        except TypeError:  # a provider that cannot be weakly referenced: not shared
            return _Instruments(provider)
        if shared is None:
            shared = _SHARED[provider] = _Instruments(provider)
        return shared


class GuardMetrics:
    """One guard's cheap per-request recording, reported through the instruments of its meter
    provider (created once per provider, when the first guard using it is built).

    Args:
        meter_provider: the provider (the global one when ``None``).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self._shared = shared = _instruments(provider)
        shared.members.add(self)
        self._score = shared.score
        self._duration = shared.duration
        self._lock = threading.Lock()
        self._decisions: dict[tuple[str, bool], int] = {}
        self._verdicts: dict[tuple[str, str], int] = {}
        self._limiter_errors: dict[str, int] = {}
        self._scores: deque[float] = deque(maxlen=_QUEUE)
        self._durations: deque[tuple[float, Mapping[str, Any]]] = deque(maxlen=_QUEUE)
        self._duration_attrs: dict[str, Mapping[str, Any]] = {}
        self._trackers: list[tuple[str, Callable[[], int]]] = []
        self._limiter_stats: Callable[[], object | None] | None = None
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
                        kind = error[8:]
                        if kind not in limiter and len(limiter) >= _MAX_ERROR_TYPES:
                            kind = "other"
                        limiter[kind] = limiter.get(kind, 0) + 1
        if results:
            scores = self._scores
            if self._shared.collecting or len(scores) < _IDLE_QUEUE:
                scores.append(decision.score)

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

    def tracked_counts(self) -> list[tuple[str, int]]:
        """``(name, clients)`` of each tracker that answered."""
        out = []
        for name, source in self._trackers:
            try:
                out.append((name, int(source())))
            except Exception:
                logger.exception("distillguard: %s.tracked_clients() failed", name)
        return out

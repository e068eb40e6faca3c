"""The metric instruments, created once per meter provider and shared by the guards using it.

Creating the same instruments twice on one SDK provider makes it warn and export two streams
under one name; so the first guard on a provider creates them and later guards join. The
observable callbacks sum the guards' tallies (a guard that is garbage-collected drops out) and
first record every guard's queued histogram values (see :mod:`distillguard.telemetry.metrics`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._version import __version__
from . import names

if TYPE_CHECKING:
    from .metrics import GuardMetrics

__all__ = ["Instruments", "instruments_for"]

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


class Instruments:
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
        meter.create_observable_counter(
            names.METRIC_STATE_EXCHANGES,
            callbacks=[self._observe_state],
            unit="{exchange}",
            description="Detector states read from and written to the shared storage, by outcome.",
        )
        meter.create_observable_counter(
            names.METRIC_GUARD_ERRORS,
            callbacks=[self._observe_guard_errors],
            unit="{request}",
            description="Requests on which the guard itself failed, by error type and the action "
            "on_internal_error took.",
        )
        meter.create_observable_counter(
            names.METRIC_WATERMARK_UNMARKED,
            callbacks=[self._observe_unmarked],
            unit="{response}",
            description="Answers the watermark passed unmarked because they were too long to hold.",
        )
        meter.create_observable_counter(
            names.METRIC_STREAMS_ENDED,
            callbacks=[self._observe_ended],
            unit="{response}",
            description="Streamed answers the guard ended before the app finished them, by reason.",
        )
        meter.create_observable_counter(
            names.METRIC_RELEASES,
            callbacks=[self._observe_releases],
            unit="{client}",
            description="Clients released from the risk policy's hold (Guard.release), by scope: "
            "made here (shared or process) or read from the shared storage and applied (seen).",
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

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._sum(m.state_counts() for m in self._members())
        return [Observation(count, {names.ATTR_STATE_OUTCOME: outcome}) for outcome, count in totals.items()]

    def _observe_guard_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        totals = self._sum(m.guard_error_counts() for m in self._members())
        return [
            Observation(count, {names.ERROR_TYPE: kind, names.ATTR_DECISION: action})
            for (kind, action), count in totals.items()
        ]

    def _observe_unmarked(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._by_reason(lambda m: m.unmarked_counts(), names.ATTR_WATERMARK_REASON)

    def _observe_ended(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._by_reason(lambda m: m.ended_counts(), names.ATTR_STREAM_REASON)

    def _observe_releases(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._by_reason(lambda m: m.release_counts(), names.ATTR_RELEASE_SCOPE)

    def _by_reason(
        self, counts: Callable[[GuardMetrics], list[tuple[str, int]]], attribute: str
    ) -> list[Observation]:
        """One observation per reason of ``counts``, summed over the guards, as ``attribute``."""
        totals = self._sum(counts(m) for m in self._members())
        return [Observation(count, {attribute: reason}) for reason, count in totals.items()]

    def _observe_clients(self, options: CallbackOptions) -> Iterable[Observation]:
        members = self._members()
        totals = self._sum(m.tracked_counts() for m in members)
        if not totals:
            return [Observation(0)]
        return [Observation(count, {names.ATTR_DETECTOR: name}) for name, count in totals.items()]


_SHARED: weakref.WeakKeyDictionary[Any, Instruments] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def instruments_for(provider: MeterProvider) -> Instruments:
    """The instruments of ``provider``, created on first use."""
    with _SHARED_LOCK:
        try:
            shared = _SHARED.get(provider)
        except TypeError:  # a provider that cannot be weakly referenced: not shared
            return Instruments(provider)
        if shared is None:
            shared = _SHARED[provider] = Instruments(provider)
        return shared

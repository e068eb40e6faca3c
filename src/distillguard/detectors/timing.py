"""Volume and timing detector (``volume_timing``).

**Signal.** Scripts send at a sustained rate, often near the client's limit, with machine-regular
inter-arrival times and no pauses; people type, read and sleep. Over the client's last
``window`` inter-arrival gaps:

* *regularity*: the coefficient of variation (std/mean) of the gaps; human and Poisson traffic
  sit near or above 1, a fixed-interval loop near 0. Scores from ``cv_high`` down to ``cv_low``;
* *sustained rate*: the mean rate over the window against ``rate_high`` (requests per minute);
* *no pause*: active in every one of the last 24 hours (an hourly activity bitmap).

The score is the strongest of the three (regularity and no-pause weighted by sustained volume),
capped at ``max_score``: timing alone is circumstantial (batch jobs are regular too), so by
default it can flag or throttle a client but not block it.

**Anchor.** Provider disclosures of distillation campaigns (Feb 2026) cite "synchronised timing";
OWASP LLM10:2025 recommends anomaly detection on query patterns and rate. Stream signature in
detection.md section 3.7.

**Cost.** O(1) per request: a ring of ``window`` float gaps (running sums are kept), one bitmap
update. State: ~450 bytes per client at the default window of 32 (the ring of gaps grows with
the client's first ``window`` requests: ~200 bytes for a client seen once).
"""

from __future__ import annotations

import math
from array import array

from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates

__all__ = ["VolumeTimingDetector"]

_FULL_DAY = (1 << 24) - 1
_EMPTY = DetectorResult("volume_timing", 0.0)


class _State:
    __slots__ = ("gaps", "hour", "hours", "last", "n", "pos", "s1", "s2")

    def __init__(self) -> None:
        self.gaps = array("d")  # grows to ``window`` gaps, then a ring
        self.last = -1.0
        self.hour = -1
        self.hours = 0
        self.n = 0
        self.pos = 0
        self.s1 = 0.0
        self.s2 = 0.0


class VolumeTimingDetector:
    """Scores sustained, machine-regular, never-pausing request streams.

    Args:
        window: how many recent inter-arrival gaps are kept.
        rate_high: requests per minute that count as sustained high volume.
        cv_low: a gap coefficient of variation at or below this is fully machine-regular.
        cv_high: the coefficient of variation above which gaps look human.
        max_score: the highest score timing alone can give.
        max_clients: the cap on tracked clients.
    """

    name = "volume_timing"
    shares_state = True

    def __init__(
        self,
        *,
        window: int = 32,
        rate_high: float = 20.0,
        cv_low: float = 0.05,
        cv_high: float = 0.35,
        max_score: float = 0.7,
        max_clients: int = 50_000,
    ) -> None:
        check_range("window", window, 8, 1024)
        check_range("rate_high", rate_high, 0.01, 1e6)
        check_range("cv_low", cv_low, 0.0, 10.0)
        check_range("cv_high", cv_high, cv_low, 10.0)
        check_range("max_score", max_score, 0.0, 1.0)
        self.window = window
        self.rate_high = rate_high
        self.cv_low = cv_low
        self.cv_high = cv_high
        self.max_score = max_score
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Record the request's arrival and score the client's recent timing."""
        now = observation.timestamp
        state = self.states.get(observation.identity.client_id)
        hour = int(now // 3600)
        last_hour = state.hour
        if hour != last_hour:
            shift = hour - last_hour if last_hour >= 0 else 24
            if shift > 0:
                state.hours = ((state.hours << min(shift, 24)) | 1) & _FULL_DAY
            if hour > last_hour:
                state.hour = hour
        last = state.last
        if now < last or last < 0.0:
            state.last = max(now, last)
            return _EMPTY
        state.last = now
        gap = now - last
        pos = state.pos
        gaps = state.gaps
        if pos < len(gaps):
            old = gaps[pos]
            gaps[pos] = gap
        else:
            old = 0.0
            gaps.append(gap)
            if len(gaps) == self.window:  # full: a copy of the exact size (appending over-allocates)
                state.gaps = gaps = array("d", gaps)
        pos += 1
        if pos == self.window:  # recompute the running sums once per lap: no drift over long histories
            state.pos = 0
            state.s1 = math.fsum(gaps)
            state.s2 = math.fsum(g * g for g in gaps)
        else:
            state.pos = pos
            state.s1 += gap - old
            state.s2 += gap * gap - old * old
        state.n = n = state.n + 1
        if n < self.window:
            return _EMPTY
        w = self.window
        mean = max(state.s1 / w, 1e-9)
        cv = math.sqrt(max(state.s2 / w - mean * mean, 0.0)) / mean
        rate = 60.0 / mean
        if cv >= self.cv_high and rate <= 0.25 * self.rate_high:
            return _EMPTY
        volume = ramp(rate, 0.25 * self.rate_high, self.rate_high)
        parts = (
            ((1.0 - ramp(cv, self.cv_low, self.cv_high)) * max(volume, 0.5), "regular"),
            (0.6 * volume, "volume"),
            (volume if state.hours == _FULL_DAY else 0.0, "no_pause"),
        )
        top, reason = max(parts)
        if top <= 0.0:
            return _EMPTY
        signals = {"cv": cv, "rate_per_minute": rate, "active_hours": float(state.hours.bit_count())}
        return DetectorResult(self.name, top * self.max_score, (reason,), signals)

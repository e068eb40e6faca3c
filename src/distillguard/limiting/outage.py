"""What happens when the shared limit storage is down: the outage policy, a circuit breaker
with exponential back-off probes, and the counters telemetry reads.

Policies (``LimitConfig.outage``):

``local_fallback`` (default)
    Count on this replica's bounded memory storage until the shared storage is back. Limits then
    hold per replica (at most ``replicas x limit`` overall). The local counts are not merged
    into the shared storage on recovery.
``fail_open``
    Admit the request uncounted.
``fail_closed``
    Refuse with 503 ``limiter_unavailable`` and ``Retry-After``.

The breaker opens after ``threshold`` consecutive failures; while open, requests skip the shared
storage (no timeout paid). After ``base_delay x 2^(n-1)`` seconds (capped at ``max_delay``) one
request probes it; success closes the breaker (recovery without a restart), failure reopens it
with the next delay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

__all__ = ["CircuitBreaker", "LimiterStats", "OutagePolicy"]

OutagePolicy = Literal["local_fallback", "fail_open", "fail_closed"]
"""What to do with a request when the shared storage cannot be reached."""


@dataclass(slots=True)
class LimiterStats:
    """Counters of the limiter's storage health, shared by every performer of a guard.

    Read them for metrics (``guard.limiter_stats.snapshot()``); they only ever grow.

    Attributes:
        storage_errors: calls to the shared storage that failed (timeouts, refusals, errors).
        short_circuited: calls skipped because the breaker was open.
        local_fallback: decisions taken on the local memory storage instead.
        fail_open: requests admitted uncounted.
        fail_closed: requests refused with 503.
        breaker_opened: times the breaker opened.
        probes: half-open probes sent to the shared storage.
        recoveries: times a probe succeeded and the breaker closed.
        refunds_unsupported: refunds the storage could not apply.
    """

    storage_errors: int = 0
    short_circuited: int = 0
    local_fallback: int = 0
    fail_open: int = 0
    fail_closed: int = 0
    breaker_opened: int = 0
    probes: int = 0
    recoveries: int = 0
    refunds_unsupported: int = 0
    evictions: Callable[[], int] | None = None

    @property
    def fallback_decisions(self) -> int:
        """Every decision taken without the shared storage."""
        return self.local_fallback + self.fail_open + self.fail_closed

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict (plus ``memory_evictions``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "evictions"}
        out["fallback_decisions"] = self.fallback_decisions
        out["memory_evictions"] = self.evictions() if self.evictions is not None else 0
        return out


class CircuitBreaker:
    """Closed -> open after ``threshold`` failures -> one half-open probe after a back-off.

    Args:
        threshold: consecutive failures that open the breaker.
        base_delay: the first back-off, in seconds.
        max_delay: the longest back-off.
        stats: counters to update.
        clock: a monotonic time source.
    """

    def __init__(
        self,
        *,
        threshold: int,
        base_delay: float,
        max_delay: float,
        stats: LimiterStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        self.opens = 0
        self.open_until = 0.0
        self.probing = False

    @property
    def is_open(self) -> bool:
        """Whether calls currently skip the shared storage."""
        return self.opens > 0

    def allow(self) -> bool:
        """Whether this call may use the shared storage (claims the probe when half-open)."""
        with self._lock:
            if self.opens == 0:
                return True
            if self.probing or self._clock() < self.open_until:
                self.stats.short_circuited += 1
                return False
            self.probing = True
            self.stats.probes += 1
            return True

    def success(self) -> None:
        """The shared storage answered."""
        if self.failures == 0 and self.opens == 0:
            return
        with self._lock:
            if self.opens:
                self.stats.recoveries += 1
            self.failures = 0
            self.opens = 0
            self.probing = False

    def failure(self) -> None:
        """The shared storage failed."""
        with self._lock:
            self.stats.storage_errors += 1
            self.failures += 1
            if self.probing or (self.opens == 0 and self.failures >= self.threshold):
                self.opens += 1
                self.stats.breaker_opened += 1
                delay = min(self.max_delay, self.base_delay * 2 ** (self.opens - 1))
                self.open_until = self._clock() + delay
                self.probing = False

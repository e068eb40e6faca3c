"""The concurrency cap: how many requests (streams included) one client has in flight.

Counted in process memory: a slot is taken when the guard admits a request and given back
exactly once when the exchange ends, whether the response completed, the client disconnected or
the app raised (the adapters end every exchange on every path). Because the release is a plain
in-process operation it cannot be lost to a cancelled task or an unreachable storage. The cap
therefore holds per process; with ``w`` workers a client can hold at most ``w x cap`` requests.
"""

from __future__ import annotations

import threading

__all__ = ["ConcurrencyLimiter", "Slot"]


class Slot:
    """One admitted request's place; :meth:`release` is idempotent."""

    __slots__ = ("_key", "_owner", "released")

    def __init__(self, owner: ConcurrencyLimiter, key: str) -> None:
        self._owner = owner
        self._key = key
        self.released = False

    def release(self) -> None:
        """Give the place back (only the first call counts)."""
        if not self.released:
            self.released = True
            self._owner._release(self._key)


class ConcurrencyLimiter:
    """In-flight counts per key, thread-safe, never more than ``max_keys`` keys (a key with
    nothing in flight is dropped at once, so only clients with live requests take memory).

    Args:
        max_keys: the most clients tracked; past it new clients are refused (fail closed).
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, cap: int) -> Slot | None:
        """A slot for ``key`` if it has fewer than ``cap`` in flight, else ``None``."""
        with self._lock:
            current = self._counts.get(key, 0)
            if current >= cap or (current == 0 and len(self._counts) >= self.max_keys):
                return None
            self._counts[key] = current + 1
        return Slot(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            current = self._counts.get(key, 0) - 1
            if current > 0:
                self._counts[key] = current
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        """How many requests ``key`` has in flight."""
        return self._counts.get(key, 0)

    @property
    def total(self) -> int:
        """Requests in flight over all clients."""
        return sum(self._counts.values())

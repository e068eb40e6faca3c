"""The bounded in-memory ``limits`` storage (sync and async faces of one table).

A hard cap on tracked keys with least-recently-used eviction (counted), lazy expiry and no timer
thread: see :mod:`distillguard.limiting._table`. ``limits``' own ``MemoryStorage`` has no cap
and runs a timer thread.
"""

from __future__ import annotations

from collections.abc import Callable

from limits.aio.storage import (
    MovingWindowSupport as AsyncMovingWindowSupport,
    SlidingWindowCounterSupport as AsyncSlidingWindowCounterSupport,
    Storage as AsyncStorage,
)
from limits.storage import MovingWindowSupport, SlidingWindowCounterSupport, Storage

from ._table import BoundedTable

__all__ = ["AsyncBoundedMemoryStorage", "BoundedMemoryStorage"]


class _TableFace:
    """What both faces say about their :class:`~distillguard.limiting._table.BoundedTable`."""

    table: BoundedTable

    def __init__(
        self,
        max_keys: int = 100_000,
        clock: Callable[[], float] | None = None,
        table: BoundedTable | None = None,
    ) -> None:
        super().__init__(None, wrap_exceptions=True)  # type: ignore[call-arg]  # the limits storage
        self.table = table if table is not None else BoundedTable(max_keys, clock)

    @property
    def evictions(self) -> int:
        """How many keys were evicted to stay under the cap."""
        return self.table.evictions

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError


class BoundedMemoryStorage(_TableFace, Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """A ``limits`` storage in process memory with a hard cap on tracked keys.

    Args:
        max_keys: the most keys held at once; past it the least recently used key is evicted
            (its counter starts again from zero) and :attr:`evictions` grows.
        clock: the time source (unix seconds), for tests; by default a monotonic clock (see
            :class:`~distillguard.limiting._table.BoundedTable`).
        table: the counter table to use (one guard's sync and async storages share it, so
            that every adapter of a guard counts in the same windows); a new one by default.
    """

    STORAGE_SCHEME = None

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.table.incr(key, expiry, amount)

    def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` back from a counter (never below zero)."""
        return self.table.decr(key, amount)

    def get(self, key: str) -> int:
        return self.table.get(key)

    def get_expiry(self, key: str) -> float:
        return self.table.get_expiry(key)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        return self.table.reset()

    def clear(self, key: str) -> None:
        self.table.clear(key)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.table.get_moving_window(key, limit, expiry)

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_sliding_window_entry(key, limit, expiry, amount)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.table.get_sliding_window(key, expiry)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.table.clear_sliding_window(key, expiry)


class AsyncBoundedMemoryStorage(
    _TableFace, AsyncStorage, AsyncMovingWindowSupport, AsyncSlidingWindowCounterSupport
):
    """The ``limits.aio`` face of :class:`BoundedMemoryStorage` (same table, no awaits inside)."""

    STORAGE_SCHEME = None

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.table.incr(key, expiry, amount)

    async def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` back from a counter (never below zero)."""
        return self.table.decr(key, amount)

    async def get(self, key: str) -> int:
        return self.table.get(key)

    async def get_expiry(self, key: str) -> float:
        return self.table.get_expiry(key)

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        return self.table.reset()

    async def clear(self, key: str) -> None:
        self.table.clear(key)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_entry(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.table.get_moving_window(key, limit, expiry)

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_sliding_window_entry(key, limit, expiry, amount)

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.table.get_sliding_window(key, expiry)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.table.clear_sliding_window(key, expiry)

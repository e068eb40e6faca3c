"""The bounded in-memory counter table behind :mod:`distillguard.limiting.storage`.

One ordered dict holds every counter, least recently used first. Inserting past ``max_keys``
evicts the least recently used key (counted in :attr:`BoundedTable.evictions`), so memory stays
bounded however many identities a client rotates through. Expiry is lazy: a key is dropped when it
is next read, and each insertion also drops up to two expired keys from the cold end. There is
no timer thread.

Moving windows store each entry as a timestamp and an amount (16 bytes, in two typed arrays),
so a cost of 4,000 (a token budget) is one entry, not 4,000. An entry counts for ``expiry``
seconds exactly: at ``stamp + expiry`` it is gone, so that ``start + expiry`` (what
``Retry-After`` is computed from) is when the room is there.

Time inside the table is :func:`time.monotonic`: a wall clock stepped back an hour (an NTP step,
a VM restored from a snapshot) must not hold a client for that hour, nor a step forward free it
early. The times the table gives out (a counter's expiry, a moving window's start) are converted
to the guard's unix seconds (:func:`~distillguard._clock.steady_time`, which never steps either)
as they leave it.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from math import floor

from .._clock import steady_time

__all__ = ["BoundedTable"]


class _Counter:
    __slots__ = ("expires", "value")

    def __init__(self, value: int, expires: float) -> None:
        self.value = value
        self.expires = expires


class _Events:
    """A moving window's entries, oldest first: the stamps ``stamps[head:]`` and their amounts
    ``amounts[head:]``, or 1 each while ``amounts`` is ``None`` (a window of requests).

    Typed arrays (8 bytes per stamp, and per amount once one is not 1) rather than a list of
    tuples (about 90 bytes per entry): a client at its limit of 1,000 requests a day holds 8 KB,
    not 90 KB. The expired entries before ``head`` are cut off once they are at least half of
    the array (and 32), so that an expiry costs what it drops, not a move of the whole window (a
    shared window of 100,000 requests a minute, running at that rate)."""

    __slots__ = ("amounts", "expiry", "head", "stamps", "total")

    def __init__(self, expiry: float) -> None:
        self.stamps = array("d")
        self.amounts: array[int] | None = None
        self.head = 0
        self.total = 0
        self.expiry = expiry

    def _amounts(self) -> array[int]:
        """The amounts, made explicit (all 1 so far) when one is about to differ."""
        if self.amounts is None:
            self.amounts = array("q", [1]) * len(self.stamps)
        return self.amounts

    def add(self, now: float, amount: int) -> None:
        """Add ``amount`` at ``now``."""
        if amount != 1 or self.amounts is not None:
            self._amounts().append(amount)
        self.stamps.append(now)
        self.total += amount

    def prune(self, now: float) -> None:
        """Drop the entries that have left the window at ``now``."""
        cutoff = now - self.expiry
        stamps, amounts = self.stamps, self.amounts
        first = head = self.head
        end = len(stamps)
        while head < end and stamps[head] <= cutoff:
            head += 1
        if head == first:
            return
        self.total -= head - first if amounts is None else sum(amounts[first:head])
        if head == end:
            self._cut(end)
        elif head >= 32 and 2 * head >= end:
            self._cut(head)
        else:
            self.head = head

    def _cut(self, head: int) -> None:
        del self.stamps[:head]
        if self.amounts is not None:
            del self.amounts[:head]
        self.head = 0

    def pop(self, amount: int) -> int:
        """Remove up to ``amount`` from the newest entries; return how much."""
        stamps = self.stamps
        removed = 0
        while len(stamps) > self.head and removed < amount:
            count = 1 if self.amounts is None else self.amounts[-1]
            take = min(count, amount - removed)
            removed += take
            if take == count:
                stamps.pop()
                if self.amounts is not None:
                    self.amounts.pop()
            else:
                self._amounts()[-1] = count - take
        if len(stamps) == self.head:  # nothing left in the window: no expired entries either
            self._cut(self.head)
        self.total -= removed
        return removed

    @property
    def empty(self) -> bool:
        """Whether no entry is left (:meth:`prune` clears a window whose entries all expired)."""
        return not self.stamps

    @property
    def start(self) -> float:
        """The stamp of the oldest entry in the window."""
        return self.stamps[self.head]

    @property
    def newest(self) -> float:
        """The stamp of the newest entry."""
        return self.stamps[-1]

    def room_at(self, needed: int) -> float:
        """The stamp of the entry whose expiry frees ``needed`` units: a request of cost ``c``
        fits once that much of the window has expired, not its oldest entry."""
        stamps, amounts = self.stamps, self.amounts
        if amounts is None:  # one unit per entry
            return stamps[min(self.head + needed, len(stamps)) - 1]
        freed = 0
        for i in range(self.head, len(stamps)):
            freed += amounts[i]
            if freed >= needed:
                return stamps[i]
        return stamps[-1]


_Slot = _Counter | _Events


def _expired(slot: _Slot, now: float) -> bool:
    if isinstance(slot, _Counter):
        return slot.expires <= now
    return slot.empty or slot.newest <= now - slot.expiry


class BoundedTable:
    """Counters and moving-window entries with a hard cap on keys (thread-safe).

    Args:
        max_keys: the most keys held at once.
        clock: the time source, in unix seconds (tests); by default :func:`time.monotonic`,
            with the times the table gives out converted to unix seconds.
    """

    def __init__(self, max_keys: int, clock: Callable[[], float] | None = None) -> None:
        self.max_keys = max_keys
        self.evictions = 0
        self._clock = clock or time.monotonic
        self._steady = clock is None
        self._data: OrderedDict[str, _Slot] = OrderedDict()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._data)

    def now(self) -> float:
        """Now, in the unix seconds of the times the table gives out."""
        return steady_time() if self._steady else self._clock()

    def _out(self, at: float, now: float) -> float:
        """The table time ``at`` (read at table time ``now``) in unix seconds."""
        return at + (steady_time() - now) if self._steady else at

    @property
    def lock(self) -> threading.RLock:
        """The table's (reentrant) lock: hold it to run several operations as one."""
        return self._lock

    # -- internals (call with the lock held) ----------------------------------------------------

    def _live(self, key: str, now: float) -> _Slot | None:
        slot = self._data.get(key)
        if slot is None:
            return None
        if isinstance(slot, _Counter):
            if slot.expires <= now:
                del self._data[key]
                return None
        else:
            slot.prune(now)
            if slot.empty:
                del self._data[key]
                return None
        self._data.move_to_end(key)
        return slot

    def _insert(self, key: str, slot: _Slot, now: float) -> None:
        data = self._data
        data[key] = slot
        for _ in range(2):  # amortised sweep of the cold end (without touching it)
            cold_key, cold = next(iter(data.items()))
            if cold_key == key or not _expired(cold, now):
                break
            del data[cold_key]
        while len(data) > self.max_keys:
            data.popitem(last=False)
            self.evictions += 1

    # -- counters (fixed window, sliding window counter) -------------------------------------

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        """Add ``amount``; a new counter expires ``expiry`` seconds from now."""
        with self._lock:
            now = self._clock()
            slot = self._live(key, now)
            if not isinstance(slot, _Counter):
                slot = _Counter(0, now + expiry)
                self._insert(key, slot, now)
            slot.value += amount
            return slot.value

    def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` back (never below zero); a missing counter stays missing."""
        with self._lock:
            slot = self._live(key, self._clock())
            if not isinstance(slot, _Counter):
                return 0
            slot.value = max(0, slot.value - amount)
            return slot.value

    def get(self, key: str) -> int:
        """The counter's value (0 when missing or expired)."""
        with self._lock:
            slot = self._live(key, self._clock())
            return slot.value if isinstance(slot, _Counter) else 0

    def get_expiry(self, key: str) -> float:
        """When the counter expires (now when missing)."""
        with self._lock:
            now = self._clock()
            slot = self._live(key, now)
            return self._out(slot.expires if isinstance(slot, _Counter) else now, now)

    def clear(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            self._data.pop(key, None)

    def reset(self) -> int:
        """Forget everything; return how many keys there were."""
        with self._lock:
            count = len(self._data)
            self._data.clear()
            return count

    # -- moving window -----------------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Add ``amount`` to the moving window if it fits under ``limit``."""
        if amount > limit:
            return False
        with self._lock:
            now = self._clock()
            slot = self._live(key, now)
            if not isinstance(slot, _Events):
                if slot is not None:
                    del self._data[key]
                slot = _Events(expiry)
                if slot.total + amount > limit:
                    return False
                self._insert(key, slot, now)
            elif slot.total + amount > limit:
                return False
            slot.add(now, amount)
            return True

    def charge_moving_window(
        self, key: str, limit: int, expiry: int, amount: int, charge: bool
    ) -> tuple[bool, float, int]:
        """Charge the moving window (or, ``charge`` false, only test it) and read it, in one
        lock acquisition: ``(allowed, start, amount in the window)``, where ``start`` is the
        stamp of the oldest entry, or for a refused ``amount`` above 1, of the entry whose
        expiry makes room for it (``start + expiry`` is when it would fit), as
        :meth:`acquire_entry` (or a test of :meth:`get_moving_window`) then
        :meth:`get_moving_window` would answer."""
        with self._lock:
            now = self._clock()
            slot = self._live(key, now)
            if not isinstance(slot, _Events):
                if not charge or amount > limit:
                    return amount <= limit, self._out(now, now), 0
                if slot is not None:
                    del self._data[key]
                slot = _Events(expiry)
                slot.add(now, amount)
                self._insert(key, slot, now)
                return True, self._out(now, now), amount
            total = slot.total
            allowed = total + amount <= limit
            if charge and allowed:
                slot.add(now, amount)
                total = slot.total
            if not allowed and 1 < amount <= limit:
                return False, self._out(slot.room_at(total + amount - limit), now), total
            return allowed, self._out(slot.start, now), total

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """``(start of the window's oldest entry, amount in the window)``."""
        with self._lock:
            now = self._clock()
            slot = self._live(key, now)
            if not isinstance(slot, _Events):
                return self._out(now, now), 0
            return self._out(slot.start, now), slot.total

    def pop_entries(self, key: str, amount: int) -> int:
        """Remove up to ``amount`` from the newest moving-window entries; return how much."""
        with self._lock:
            slot = self._live(key, self._clock())
            if not isinstance(slot, _Events):
                return 0
            return slot.pop(amount)

    # -- sliding window counter --------------------------------------------------------------

    @staticmethod
    def sliding_keys(key: str, expiry: int, at: float) -> tuple[str, str]:
        """The previous and the current window's counter keys."""
        return f"{key}/{int((at - expiry) / expiry)}", f"{key}/{int(at / expiry)}"

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """``(previous count, previous ttl, current count, current ttl)`` as ``limits`` expects."""
        with self._lock:
            now = self._clock()
            return self._sliding(key, expiry, now)

    def _sliding(self, key: str, expiry: int, now: float) -> tuple[int, float, int, float]:
        previous_key, current_key = self.sliding_keys(key, expiry, now)
        previous = self.get(previous_key)
        current = self.get(current_key)
        previous_ttl = 0.0 if previous == 0 else (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """Add ``amount`` to the current window if the weighted count stays under ``limit``."""
        if amount > limit:
            return False
        with self._lock:
            now = self._clock()
            previous, previous_ttl, current, _ = self._sliding(key, expiry, now)
            if floor(previous * previous_ttl / expiry + current) + amount > limit:
                return False
            self.incr(self.sliding_keys(key, expiry, now)[1], 2 * expiry, amount)
            return True

    def refund_sliding(self, key: str, expiry: int, amount: int) -> int:
        """Take ``amount`` back from the current sliding window (never below zero)."""
        with self._lock:
            return self.decr(self.sliding_keys(key, expiry, self._clock())[1], amount)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        """Forget both windows of ``key``."""
        with self._lock:
            for part in self.sliding_keys(key, expiry, self._clock()):
                self._data.pop(part, None)

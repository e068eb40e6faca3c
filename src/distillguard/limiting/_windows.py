"""Charging a window on the bounded memory table in one call, without ``limits``' strategies.

On ``memory://`` (and on the local fallback storage) the limiter charges and reads each window
here: the table's operations run under one lock acquisition, with the storage key computed once
per ``(window, client)`` and cached. The arithmetic is exactly that of ``limits``' strategies
(``MovingWindowRateLimiter``, ``FixedWindowRateLimiter``, ``SlidingWindowCounterRateLimiter``:
``hit``/``test`` then ``get_window_stats``), including the fixed window's refund of a refused hit.
"""

from __future__ import annotations

import time
from math import floor, inf
from typing import Any

from ._table import BoundedTable
from .plan import LimitCheck, LimitOutcome

__all__ = ["WindowKeys", "charge_window"]


class WindowKeys:
    """Storage keys by ``(window, identifiers)``, computed once (``item.key_for``) and cached
    (the cache is emptied when it holds ``max_keys``: rotating identities cannot grow it).

    Args:
        max_keys: the most keys cached at once.
    """

    __slots__ = ("_keys", "_max")

    def __init__(self, max_keys: int) -> None:
        self._keys: dict[tuple[Any, tuple[str, ...]], str] = {}
        self._max = max_keys

    def __call__(self, check: LimitCheck) -> str:
        cache_key = (check.item, check.key)
        key = self._keys.get(cache_key)
        if key is None:
            key = check.item.key_for(*check.key)
            if len(self._keys) >= self._max:
                self._keys.clear()
            self._keys[cache_key] = key
        return key


def charge_window(table: BoundedTable, check: LimitCheck, key: str, charge: bool, mode: str) -> LimitOutcome:
    """Charge ``check`` on ``table`` under ``key`` (or only test it, ``charge`` false) and read
    the window, as ``limits``' strategy ``check.strategy`` would; the outcome (``mode``)."""
    item = check.item
    limit = item.amount
    expiry = item.get_expiry()
    cost = check.cost
    strategy = check.strategy
    with table.lock:
        if strategy == "moving-window":
            if charge:
                allowed = table.acquire_entry(key, limit, expiry, cost)
            else:
                allowed = table.get_moving_window(key, limit, expiry)[1] <= limit - cost
            start, items = table.get_moving_window(key, limit, expiry)
            remaining, reset = limit - items, start + expiry
        elif strategy == "fixed-window":
            if charge:
                allowed = table.incr(key, expiry, cost) <= limit
                if not allowed:
                    table.decr(key, cost)  # a refused hit keeps no quota
            else:
                allowed = table.get(key) < limit - cost + 1
            remaining, reset = max(0, limit - table.get(key)), table.get_expiry(key)
        else:
            remaining, reset, allowed = _sliding(table, key, limit, expiry, cost, charge)
    return LimitOutcome(
        check=check, allowed=allowed, remaining=remaining, reset_at=reset, mode=mode, charged=charge
    )


def _sliding(
    table: BoundedTable, key: str, limit: int, expiry: int, cost: int, charge: bool
) -> tuple[int, float, bool]:
    """The sliding window counter: ``(remaining, reset_at, allowed)``."""
    if charge:
        allowed = table.acquire_sliding_window_entry(key, limit, expiry, cost)
    else:
        previous, previous_ttl, current, _ = table.get_sliding_window(key, expiry)
        allowed = previous * previous_ttl / expiry + current < limit - cost + 1
    previous, previous_ttl, current, current_ttl = table.get_sliding_window(key, expiry)
    remaining = max(0, limit - floor(previous * previous_ttl / expiry + current))
    now = time.time()
    if not (previous or current):
        return remaining, now, allowed
    previous_reset, current_reset = inf, inf
    if previous:
        previous_reset = previous_ttl % (expiry / previous)
    if current:
        current_reset = current_ttl % expiry
    return remaining, now + min(previous_reset, current_reset), allowed

"""Charging a window on the bounded memory table in one call, without ``limits``' strategies.

On ``memory://`` (and on the local fallback storage) the limiter charges and reads each window
here: the table's operations run under one lock acquisition, with the storage key computed once
per ``(window, client)`` and cached. The arithmetic is exactly that of ``limits``' strategies
(``MovingWindowRateLimiter``, ``FixedWindowRateLimiter``, ``SlidingWindowCounterRateLimiter``:
``hit``/``test`` then ``get_window_stats``), including the fixed window's refund of a refused hit.
"""

from __future__ import annotations

from math import floor, inf
from typing import Any

from ._table import BoundedTable
from .plan import LimitCheck, LimitOutcome

__all__ = ["WindowKeys", "charge_window"]


class WindowKeys:
    """Storage keys of windows, equal to ``item.key_for(*check.key)``: the window's own part
    (namespace, amount, multiples, granularity) is built once per window and cached, so a key
    costs one string join and the cache does not grow with the number of clients.

    Args:
        max_windows: the most windows cached at once (the cache empties past it).
    """

    __slots__ = ("_max", "_parts")

    def __init__(self, max_windows: int = 1024) -> None:
        self._parts: dict[tuple[Any, str], tuple[str, str]] = {}
        self._max = max_windows

    def __call__(self, check: LimitCheck) -> str:
        item, identifiers = check.item, check.key
        try:
            joined = "/".join(identifiers) if identifiers else None
        except TypeError:  # a part that is not a string: ``key_for`` formats it
            joined = None
        if joined is None:
            return item.key_for(*identifiers)
        cache_key = (item, item.namespace)  # items compare without their namespace
        parts = self._parts.get(cache_key)
        if parts is None:
            if len(self._parts) >= self._max:
                self._parts.clear()
            parts = (item.namespace, f"{item.amount}/{item.multiples}/{item.GRANULARITY.name}")
            self._parts[cache_key] = parts
        return f"{parts[0]}/{joined}/{parts[1]}"


def charge_window(table: BoundedTable, check: LimitCheck, key: str, charge: bool, mode: str) -> LimitOutcome:
    """Charge ``check`` on ``table`` under ``key`` (or only test it, ``charge`` false) and read
    the window, as ``limits``' strategy ``check.strategy`` would; the outcome (``mode``)."""
    item = check.item
    limit = item.amount
    expiry = item.get_expiry()
    cost = check.cost
    strategy = check.strategy
    if strategy == "moving-window":
        allowed, start, items = table.charge_moving_window(key, limit, expiry, cost, charge)
        return LimitOutcome(
            check=check,
            allowed=allowed,
            remaining=limit - items,
            reset_at=start + expiry,
            mode=mode,
            charged=charge,
        )
    with table.lock:
        if strategy == "fixed-window":
            if charge and cost:  # a cost of 0 only reads the window (the shared penalty box)
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
    now = table.now()
    if not (previous or current):
        return remaining, now, allowed
    previous_reset, current_reset = inf, inf
    if previous:
        previous_reset = previous_ttl % (expiry / previous)
    if current:
        current_reset = current_ttl % expiry
    return remaining, now + min(previous_reset, current_reset), allowed

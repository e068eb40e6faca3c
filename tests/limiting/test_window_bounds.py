"""How many requests each strategy lets through in any span of one window, from an empty start
and against schedules built to beat it (reliability.md R3 and R4; docs/limits.md states the
bounds): the moving window never more than the limit; the fixed window up to twice the limit
across a window boundary; the sliding window counter, an approximation, more than the limit and
up to twice it (both windows filled at their ends: the previous one's weight has almost gone when
the current one fills)."""

from __future__ import annotations

import bisect
import random

import pytest
from limits import parse

from distillguard.limiting._windows import WindowKeys, charge_window
from distillguard.limiting.memory import BoundedMemoryStorage
from distillguard.limiting.plan import LimitCheck

LIMIT, PERIOD = 10, 60.0
BOUNDARY = [0.0] + [PERIOD - 0.1] * 2 * LIMIT + [PERIOD + 0.1] * 2 * LIMIT
"""One request opens a window; a burst just before it closes and another just after."""
LATE = [79.9] * LIMIT + [139.85] * LIMIT
"""Windows start at 20 s (the clock's start): a burst at the end of one window, and another at
the end of the next, 59.95 s later."""


def _densest(strategy: str, schedule: list[float]) -> int:
    """The most requests admitted within any span of one period, for a client sending at the
    times of ``schedule`` (seconds from an empty start)."""
    now = [1_000_000.0]
    storage = BoundedMemoryStorage(clock=lambda: now[0])
    check = LimitCheck(policy="p", item=parse(f"{LIMIT}/minute"), key=("client", "a"), strategy=strategy)
    keys = WindowKeys()
    admitted: list[float] = []
    for t in schedule:
        now[0] = 1_000_000.0 + t
        if charge_window(storage.table, check, keys(check), True, "primary").allowed:
            admitted.append(t)
    return max(
        (bisect.bisect_right(admitted, a + PERIOD - 1e-9) - i for i, a in enumerate(admitted)), default=0
    )


def _schedules(seed: int, count: int) -> list[list[float]]:
    """Random senders, some with bursts at the times a window opened at 0 s closes."""
    rng = random.Random(seed)
    out = [BOUNDARY]
    for _ in range(count):
        times = [rng.uniform(0, 4 * PERIOD) for _ in range(rng.randint(2 * LIMIT, 20 * LIMIT))]
        burst_at = rng.choice([PERIOD - 0.1, PERIOD + 0.1, 2 * PERIOD - 0.1, 1.5 * PERIOD])
        times += [burst_at] * rng.randint(0, 2 * LIMIT)
        out.append(sorted(times))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_the_moving_window_never_admits_more_than_the_limit_in_any_window(seed: int) -> None:
    assert max(_densest("moving-window", s) for s in _schedules(seed, 60)) == LIMIT


def test_the_fixed_window_admits_up_to_twice_the_limit_across_a_boundary() -> None:
    """The boundary burst gets 2 x limit - 1 through within 0.2 s (the request that opened the
    window is the one missing); no schedule gets more than twice the limit."""
    assert _densest("fixed-window", BOUNDARY) == 2 * LIMIT - 1
    assert max(_densest("fixed-window", s) for s in _schedules(7, 150)) <= 2 * LIMIT


def test_the_sliding_window_counter_admits_more_than_the_limit_and_up_to_twice() -> None:
    """Random schedules get more than the limit through; two late bursts get twice the limit
    within 59.95 s (the counter floors the previous window's weighted count, as ``limits`` does,
    so a weight under one admits the current window in full); nothing gets more."""
    densest = max(_densest("sliding-window-counter", s) for s in _schedules(11, 150))
    assert LIMIT < densest <= 2 * LIMIT
    assert _densest("sliding-window-counter", LATE) == 2 * LIMIT

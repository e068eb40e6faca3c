"""The one-call window path on the bounded memory table agrees with ``limits``' strategies."""

from __future__ import annotations

import time

import pytest
from limits import parse
from limits.strategies import STRATEGIES

from distillguard.limiting._windows import WindowKeys, charge_window
from distillguard.limiting.memory import BoundedMemoryStorage
from distillguard.limiting.plan import LimitCheck


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
@pytest.mark.parametrize("cost", [1, 3])
def test_charge_window_matches_the_strategy(strategy: str, cost: int) -> None:
    """Charging and testing a window step by step gives the same allowed/remaining/reset as the
    ``limits`` strategy on an identical table, through refusals and the window's expiry."""
    clock = _Clock()
    fast, reference = BoundedMemoryStorage(clock=clock), BoundedMemoryStorage(clock=clock)
    limiter = STRATEGIES[strategy](reference)
    item = parse("10/minute")
    check = LimitCheck(policy="p", item=item, key=("client", "a"), cost=cost, strategy=strategy)
    keys = WindowKeys()
    refused = 0
    for step in range(40):
        clock.now += 7.0 if step % 5 == 4 else 0.5
        charge = step % 3 != 2
        outcome = charge_window(fast.table, check, keys(check), charge, "primary")
        if charge:
            allowed = limiter.hit(item, *check.key, cost=cost)
            if not allowed and strategy == "fixed-window":
                reference.decr(item.key_for(*check.key), cost)
        else:
            allowed = limiter.test(item, *check.key, cost=cost)
        stats = limiter.get_window_stats(item, *check.key)
        assert outcome.allowed == allowed, step
        assert outcome.remaining == stats.remaining, step
        expected = stats.reset_time
        if strategy == "sliding-window-counter":  # limits reads the wall clock for this one
            expected += clock.now - time.time()
        assert outcome.reset_at == pytest.approx(expected, abs=0.05), step
        assert outcome.charged is charge
        refused += not allowed
    assert refused > 0  # the sequence reaches the limit


def test_window_keys_equal_limits_keys() -> None:
    """A window's key is exactly ``item.key_for(*identifiers)``, namespaces and the empty
    identifiers included, and the per-window cache stays within its bound."""
    keys = WindowKeys(max_windows=2)
    items = [parse("5/second"), parse("5/second"), parse("60/2 minutes"), parse("1000/day")]
    items[1].namespace = "OTHER"
    for item in items:
        for identifiers in [("client", "pro", "a/b"), ("x",), ()]:
            check = LimitCheck(policy="p", item=item, key=identifiers)
            assert keys(check) == item.key_for(*identifiers)
    assert len(keys._parts) <= 2

"""The one-call window path on the bounded memory table agrees with ``limits``' strategies."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings, strategies as st
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


_Op = tuple[str, float]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("charge"), st.integers(1, 3).map(float)),
            st.tuples(st.just("charge"), st.integers(1, 3).map(float)),
            st.tuples(st.just("test"), st.integers(1, 9).map(float)),
            st.tuples(st.just("wait"), st.floats(0.0, 1.0)),
            st.tuples(st.just("wait"), st.floats(0.0, 40.0)),
            st.tuples(st.just("refund"), st.integers(1, 12).map(float)),
        ),
        max_size=600,
    ),
    limit=st.sampled_from([12, 1000]),
)
def test_moving_window_matches_a_model_through_expiry_and_refunds(ops: list[_Op], limit: int) -> None:
    """Random charges, tests, waits and refunds (see :func:`_replay`)."""
    _replay(ops, limit)


def test_a_busy_moving_window_drops_its_expired_entries_in_batches() -> None:
    """A steady flow (a charge every half second for a 10 s window, a refund now and then):
    the expired entries are cut off the front in batches, and every answer stays the model's."""
    ops: list[_Op] = []
    for i in range(400):
        ops += [("charge", 1.0 + i % 2), ("wait", 0.5)]
        if i % 17 == 16:
            ops.append(("refund", 2.0))
    assert _replay(ops, 1000) >= 10


def _replay(ops: list[_Op], limit: int) -> int:
    """Run ``ops`` on the memory table's moving window and check that it answers every charge,
    test and refund as a plain list of ``(stamp, amount)`` filtered at each step would, and
    holds at most twice its live entries plus 32; return how many times it cut expired entries
    off the front of its list."""
    from distillguard.limiting._table import BoundedTable

    clock = _Clock()
    cuts = previous_head = 0
    table = BoundedTable(8, clock=clock)
    model: list[tuple[float, int]] = []  # oldest first
    expiry = 10
    for op, value in ops:
        if op == "wait":
            clock.now += value
            continue
        model = [(stamp, amount) for stamp, amount in model if stamp > clock.now - expiry]
        total = sum(amount for _, amount in model)
        if op == "refund":
            removed = table.pop_entries("w", int(value))
            left = int(value)
            while model and left:
                stamp, amount = model.pop()
                take = min(amount, left)
                left -= take
                if take < amount:
                    model.append((stamp, amount - take))
            assert removed == int(value) - left
            continue
        cost, charge = int(value), op == "charge"
        allowed, start, seen = table.charge_moving_window("w", limit, expiry, cost, charge)
        fits = total + cost <= limit
        assert (allowed, seen) == (fits, total + cost if charge and fits else total)
        if charge and allowed:
            model.append((clock.now, cost))
        if model and (allowed or cost == 1):
            assert start == model[0][0]
        slot = table._data.get("w")
        if slot is not None:
            live = len(slot.stamps) - slot.head  # type: ignore[union-attr]
            assert live == len(model)
            amounts = slot.amounts  # type: ignore[union-attr]
            assert amounts is None or len(amounts) == len(slot.stamps)  # type: ignore[union-attr]
            assert slot.total == sum(amount for _, amount in model)  # type: ignore[union-attr]
            assert len(slot.stamps) <= 2 * live + 32  # type: ignore[union-attr]
            cuts += slot.head == 0 and previous_head > 0 and live > 0  # type: ignore[union-attr]
            previous_head = slot.head  # type: ignore[union-attr]
    return cuts

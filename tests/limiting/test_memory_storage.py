"""The bounded memory storage: exact limits, a hard key cap with counted LRU eviction, lazy
expiry, no timer thread, and memory that stays bounded when identities rotate."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import STRATEGIES

from distillguard import Guard, LimitConfig
from distillguard.identity import Identity
from distillguard.limiting.storage import BoundedMemoryStorage, build_storage
from distillguard.request import GuardRequest
from tests.helpers import decide_anonymous


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_exact_limit_then_refusal(strategy: str) -> None:
    """Hits 1..limit are admitted and hit limit+1 is refused, for every strategy."""
    limiter = STRATEGIES[strategy](BoundedMemoryStorage())
    item = parse("5/minute")
    assert [limiter.hit(item, "k") for _ in range(6)] == [True] * 5 + [False]


def test_sixteen_threads_admit_exactly_the_limit() -> None:
    """16 threads hitting one key at once are admitted exactly ``limit`` times."""
    limiter = STRATEGIES["moving-window"](BoundedMemoryStorage())
    item = parse("100/minute")
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(20):
            ok = limiter.hit(item, "shared")
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100


def test_key_cap_evicts_least_recently_used_and_counts() -> None:
    """Past the cap the least recently used key goes (counted); a recently used key stays."""
    storage = BoundedMemoryStorage(max_keys=16)
    for i in range(16):
        storage.incr(f"k{i}", 60)
    storage.incr("k0", 60)  # k0 is now the most recently used
    for i in range(16, 20):
        storage.incr(f"k{i}", 60)
    assert len(storage.table) == 16
    assert storage.evictions == 4
    assert storage.get("k0") == 2
    assert storage.get("k1") == 0  # evicted


def test_expiry_is_lazy_and_needs_no_thread() -> None:
    """Keys expire when read (and are swept on insert) with no timer thread; ``limits``' own
    memory storage starts one."""
    clock = Clock()
    before = threading.active_count()
    storage = BoundedMemoryStorage(clock=clock)
    for i in range(1000):
        storage.incr(f"k{i}", 60)
        storage.acquire_entry(f"m{i}", 10, 60)
    assert threading.active_count() == before
    clock.now += 61
    assert storage.get("k0") == 0
    for i in range(1000):
        storage.incr(f"n{i}", 60)
    assert len(storage.table) < 1300  # most expired keys were swept by the inserts
    reference = MemoryStorage()
    reference.incr("k", 1)
    assert threading.active_count() > before
    reference.timer.cancel()


def test_moving_window_stores_a_cost_as_one_entry() -> None:
    """A cost of 5000 is one moving-window entry, and a refund pops the newest amounts."""
    storage = BoundedMemoryStorage()
    assert storage.acquire_entry("k", 10_000, 60, 5000)
    assert storage.acquire_entry("k", 10_000, 60, 3)
    assert list(storage.table._data["k"].amounts) == [5000, 3]  # type: ignore[union-attr]
    assert storage.table.pop_entries("k", 4) == 4
    assert storage.get_moving_window("k", 10_000, 60)[1] == 4999


def test_async_variant_shares_the_behaviour() -> None:
    """The async storage is the same table behind ``limits.aio``'s interface."""
    import anyio
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = build_storage("memory://", asynchronous=True, max_keys=16)
    limiter = MovingWindowRateLimiter(storage)
    item = parse("2/minute")

    async def run() -> list[bool]:
        return [await limiter.hit(item, "k") for _ in range(3)]

    assert anyio.run(run) == [True, True, False]


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _hit_many(guard: Guard, count: int) -> None:
    perform = guard.sync_performer()
    for i in range(count):
        request = GuardRequest(
            method="POST",
            path="/v1/chat/completions",
            authorization=None,
            content_type="application/json",
            body=b"",
            client_address=None,
            user_agent=None,
            timestamp=0.0,
            identity=Identity(client_id=f"rotating-{i}"),
        )
        assert guard.decide(request, perform).allowed


@pytest.mark.slow
def test_100k_rotating_identities_stay_under_a_memory_budget(tracer_provider: Any) -> None:
    """100,000 identities through a guard (two windows each) grow resident memory by under
    24 MB with a 20,000-key cap (about 12 MB measured), and evictions are counted."""
    guard = Guard(
        jwt=None,
        limits=LimitConfig(default="60/minute;1000/day", memory_max_keys=20_000),
        tracer_provider=tracer_provider,
    )
    _hit_many(guard, 2000)  # warm caches
    gc.collect()
    base = _rss()
    _hit_many(guard, 100_000)
    gc.collect()
    grown = _rss() - base
    assert grown < 24 * 1024 * 1024, grown
    stats = guard.limiter_stats.snapshot()
    assert stats["memory_evictions"] >= 2 * 100_000 - 20_000


@pytest.mark.parametrize(
    ("strategy", "step"),
    [
        ("moving-window", -3600.0),
        ("moving-window", 3600.0),
        ("fixed-window", -3600.0),
        ("sliding-window-counter", -3600.0),
    ],
)
def test_a_wall_clock_step_neither_holds_nor_frees_a_client(
    monkeypatch: pytest.MonkeyPatch, strategy: str, step: float
) -> None:
    """The memory windows run on a monotonic clock: after the wall clock steps an hour back (or
    forward), a client over its window is still refused with a Retry-After within the window,
    and is admitted again once the window (one second) has really passed."""
    import time

    wall = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: wall() + offset[0])
    guard = Guard(jwt=None, limits=LimitConfig(default="2 per 1 second", strategy=strategy))

    def call() -> tuple[str, int | None]:
        return decide_anonymous(guard, "198.51.100.9")

    start = time.monotonic()
    assert [call()[0] for _ in range(2)] == ["allow", "allow"]
    action, retry = call()
    assert action == "rate_limited" and retry is not None and 1 <= retry <= 2
    offset[0] = step
    action, retry = call()
    assert action == "rate_limited" and retry is not None and 1 <= retry <= 2
    time.sleep(max(0.0, 2.1 - (time.monotonic() - start)))  # the window, twice (sliding counter)
    assert call()[0] == "allow"


def test_a_refused_request_of_cost_c_is_told_when_c_units_free_up() -> None:
    """A moving window holding entries at t=0, 1, 2, 3 (limit 4, 6 s) refuses a request of
    cost 3 until the entry of t=2 expires (t=8), not the oldest one (t=6)."""
    from distillguard.limiting._table import BoundedTable

    now = [0.0]
    table = BoundedTable(100, clock=lambda: now[0])
    for t in range(4):
        now[0] = float(t)
        assert table.charge_moving_window("k", 4, 6, 1, True)[0]
    allowed, start, total = table.charge_moving_window("k", 4, 6, 3, True)
    assert (allowed, start + 6, total) == (False, 8.0, 4)
    allowed, start, _ = table.charge_moving_window("k", 4, 6, 1, True)
    assert (allowed, start + 6) == (False, 6.0)  # one unit: the oldest entry


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_flood_of_random_addresses_stays_under_the_key_cap(family: str) -> None:
    """M2: anonymous traffic from 20,000 random addresses (an IPv6 client rotating within its
    /64 counts once; these come from distinct /64s) never holds more than ``memory_max_keys``
    counters; the evictions are counted, and an address that keeps coming is still limited."""
    import random

    rng = random.Random(7)
    guard = Guard(jwt=None, limits=LimitConfig(default="3/minute", memory_max_keys=1000))

    def address() -> str:
        if family == "ipv4":
            return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        return ":".join(f"{rng.randrange(0x10000):x}" for _ in range(8))

    for _ in range(20_000):
        assert decide_anonymous(guard, address())[0] == "allow"
        assert len(guard._counters) <= 1000
    assert guard.limiter_stats.snapshot()["memory_evictions"] >= 20_000 - 1000
    regular = "203.0.113.5" if family == "ipv4" else "2001:db8:1:2::5"
    assert [decide_anonymous(guard, regular)[0] for _ in range(4)] == ["allow"] * 3 + ["rate_limited"]

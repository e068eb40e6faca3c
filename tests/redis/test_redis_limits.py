"""Limits on a real redis-server: exact counts (sync and async), concurrency, exact refunds and
token reconciliation, the storages' defaults, and the other schemes wired through ``limits``."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig
from distillguard.limiting import LimitRule, Price
from distillguard.limiting.storage import DEFAULT_TIMEOUT, build_storage
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, LLMApp, asgi_call, chat_body, llm_wsgi_app, wsgi_call
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def guard(tracer_provider: Any, url: str, **limits: Any) -> Guard:
    limits.setdefault("default", "5/minute")
    return Guard(
        jwt=jwt_config(), limits=LimitConfig(storage_uri=url, **limits), tracer_provider=tracer_provider
    )


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_exact_limit_on_redis(
    redis_server: RedisServer, tracer_provider: Any, kind: str, strategy: str
) -> None:
    """Hits 1..limit are admitted on Redis, hit limit+1 gets 429 with Retry-After >= 1, and the
    counters live in Redis under the configured prefix."""
    h = Harness(kind, guard(tracer_provider, redis_server.url, strategy=strategy))
    results = [h.call() for _ in range(6)]
    assert [r[0] for r in results] == [200] * 5 + [429]
    assert int(results[-1][1]["retry-after"]) >= 1
    assert results[0][1]["ratelimit"].startswith('"5-per-1-minute";r=4;')
    assert "LIMITER/c/default/client-1/5/1/minute" in redis_server.cli("KEYS", "dg:*")
    assert h.limiter.stats.storage_errors == 0


def test_sixteen_threads_admit_exactly_the_limit(redis_server: RedisServer, tracer_provider: Any) -> None:
    """16 threads sharing one WSGI middleware on Redis are admitted exactly ``limit`` times."""
    mw = DistillGuardWSGIMiddleware(
        llm_wsgi_app, guard=guard(tracer_provider, redis_server.url, default="50/minute")
    )
    token = make_token()
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(8):
            status = wsgi_call(mw, token=token)[0]
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(200) == 50 and statuses.count(429) == 78


@pytest.mark.anyio
async def test_two_hundred_coroutines_admit_exactly_the_limit(
    redis_server: RedisServer, tracer_provider: Any
) -> None:
    """200 concurrent ASGI requests on Redis: exactly ``limit`` are admitted."""
    # generous timeouts: this checks the count, not the timeout (a saturated CI loop is slow)
    slack = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "pool_timeout": 10.0}
    g = guard(tracer_provider, redis_server.url, default="60/minute", storage_options=slack)
    mw = DistillGuardMiddleware(LLMApp(), guard=g)
    token = make_token()
    results = await asyncio.gather(*(asgi_call(mw, token=token) for _ in range(200)))
    await mw._perform.limiter.aclose()
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 60 and statuses.count(429) == 140
    assert g.limiter_stats.storage_errors == 0


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_token_reconciliation_on_redis_is_exact(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """On Redis the token window holds exactly the usage: over-estimates are decremented,
    under-estimates charged, and a refused estimate leaves nothing behind."""
    rules = [LimitRule(name="tok", limits="1000/minute", unit="tokens")]
    h = Harness(kind, guard(tracer_provider, redis_server.url, default="100/minute", rules=rules))
    key = "dg:LIMITER/r/tok/client-1/1000/1/minute"
    h.call(chat_body(), headers={"x-usage": "10,20"})  # estimate 110, used 30
    assert redis_server.cli("GET", key).strip() == "30"
    ttl = int(redis_server.cli("TTL", key))
    assert 0 < ttl <= 60  # the refund kept the window's expiry
    h.call(chat_body(), headers={"x-usage": "10,400"})  # estimate 110, used 410
    assert redis_server.cli("GET", key).strip() == "440"
    assert h.call(chat_body(max_tokens=900))[0] == 429  # estimate 910 > 560 left
    assert redis_server.cli("GET", key).strip() == "440"
    h.call(chat_body(), headers={"x-mode": "sse-nousage", "x-deltas": "3"})  # 10 + 3
    assert redis_server.cli("GET", key).strip() == "453"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_input_and_output_windows_on_redis_are_exact(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """On Redis an input and an output token window each hold their side of the usage."""
    rules = [
        LimitRule(name="in", limits="1000/minute", unit="input_tokens"),
        LimitRule(name="out", limits="1000/minute", unit="output_tokens"),
    ]
    h = Harness(kind, guard(tracer_provider, redis_server.url, default="100/minute", rules=rules))
    side = {name: f"dg:LIMITER/r/{name}/client-1/1000/1/minute" for name in ("in", "out")}
    h.call(chat_body(), headers={"x-usage": "12,20"})  # estimates 10 and 100
    assert [redis_server.cli("GET", side[n]).strip() for n in ("in", "out")] == ["12", "20"]
    h.call(chat_body(), headers={"x-mode": "sse-nousage", "x-deltas": "3"})  # 10 (estimated) and 3
    assert [redis_server.cli("GET", side[n]).strip() for n in ("in", "out")] == ["22", "23"]
    assert h.call(chat_body(max_tokens=990))[0] == 429  # 23 + 990 over the output window
    assert [redis_server.cli("GET", side[n]).strip() for n in ("in", "out")] == ["22", "23"]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_cost_window_on_redis_holds_the_price_of_the_usage(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """On Redis a cost window holds, in micros, what each answer cost at its model's price:
    estimates are reconciled, and a refused estimate leaves nothing behind."""
    prices = {"*": Price(2, 10), "big": Price(20, 100)}
    rules = [LimitRule(name="spend", limits="1/minute", unit="cost", prices=prices)]
    h = Harness(kind, guard(tracer_provider, redis_server.url, default="100/minute", rules=rules))
    key = "dg:LIMITER/r/spend/client-1/1000000/1/minute"
    h.call(chat_body(), headers={"x-usage": "10,20"})  # estimate 1,020 micros, used 220
    assert redis_server.cli("GET", key).strip() == "220"
    h.call(chat_body(model="big", max_tokens=5000), headers={"x-usage": "10,5000"})  # + 500,200
    assert redis_server.cli("GET", key).strip() == "500420"
    assert h.call(chat_body(model="big", max_tokens=5000))[0] == 429  # 500,200 > 499,580 left
    assert redis_server.cli("GET", key).strip() == "500420"
    assert 0 < int(redis_server.cli("TTL", key)) <= 60


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_server_errors_are_refunded_on_redis(
    redis_server: RedisServer, tracer_provider: Any, kind: str, strategy: str
) -> None:
    """``refund_server_errors`` on Redis: the 5xx answers leave nothing in the client's windows
    (read by ``Guard.usage`` and in Redis itself), a 4xx keeps its charge."""
    g = guard(
        tracer_provider, redis_server.url, default="5/minute", strategy=strategy, refund_server_errors=True
    )
    h = Harness(kind, g)
    statuses = [
        h.call(chat_body(), headers={"x-mode": "error", "x-status": s})[0] for s in ("500", "502", "400")
    ]
    assert statuses == [500, 502, 400]
    assert h.call(chat_body())[0] == 200
    (window,) = g.usage("client-1")
    assert window.used == 2
    key = "dg:LIMITER/c/default/client-1/5/1/minute"
    held = redis_server.cli("LLEN" if strategy == "moving-window" else "GET", key).strip()
    assert held == "2"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_identity_that_is_no_text_never_reaches_redis(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """A ``sub`` holding a lone surrogate (valid JSON) would name keys Redis refuses: before,
    its requests failed on the storage and opened the circuit breaker, putting every client of
    the replica on the local fallback. It is refused with 401 before any window, and the next
    client is still counted on Redis."""
    g = guard(tracer_provider, redis_server.url, default="5/minute")
    h = Harness(kind, g)
    bad = make_token(sub="bad\ud800id")
    assert [h.call(chat_body(), token=bad)[0] for _ in range(4)] == [401] * 4
    assert h.call(chat_body())[0] == 200
    stats = g.limiter_stats.snapshot()
    assert stats["storage_errors"] == 0 and stats["breaker_opened"] == 0 and stats["local_fallback"] == 0
    assert redis_server.cli("LLEN", "dg:LIMITER/c/default/client-1/5/1/minute").strip() == "1"


def test_moving_window_refund_on_redis(redis_server: RedisServer, tracer_provider: Any) -> None:
    """A refused request refunds the moving window it was already charged on (newest entries
    popped): the list holds exactly the admitted requests."""
    rules = [LimitRule(name="route", limits="2/minute", routes=["/v1/chat/completions"])]
    h = Harness("wsgi", guard(tracer_provider, redis_server.url, default="5/minute", rules=rules))
    assert [h.call()[0] for _ in range(4)] == [200, 200, 429, 429]
    assert redis_server.cli("LLEN", "dg:LIMITER/c/default/client-1/5/1/minute").strip() == "2"


def test_storages_get_short_timeouts_and_wrapped_errors(redis_server: RedisServer) -> None:
    """Sync and async Redis storages get 250 ms connect and read timeouts and
    ``wrap_exceptions``; the async one uses redis-py's asyncio client (installed with the
    ``redis`` extra)."""
    sync = build_storage(redis_server.url, asynchronous=False)
    kwargs = sync.storage.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == DEFAULT_TIMEOUT == 0.25
    assert kwargs["socket_connect_timeout"] == 0.25
    assert sync.wrap_exceptions is True
    aio = build_storage(redis_server.url, asynchronous=True)
    assert type(aio.bridge).__name__ == "RedispyBridge"
    akwargs = aio.bridge.storage.connection_pool.connection_kwargs
    assert (akwargs["socket_timeout"], akwargs["socket_connect_timeout"]) == (0.25, 0.25)
    assert aio.wrap_exceptions is True
    custom = build_storage(redis_server.url, {"socket_timeout": 1.5}, asynchronous=False)
    assert custom.storage.connection_pool.connection_kwargs["socket_timeout"] == 1.5


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_valkey_scheme_counts_on_a_real_server(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """``valkey://`` goes through limits' Valkey storage (the valkey client) and counts exactly."""
    url = redis_server.url.replace("redis://", "valkey://")
    h = Harness(kind, guard(tracer_provider, url, default="3/minute"))
    assert [h.call()[0] for _ in range(4)] == [200, 200, 200, 429]
    assert h.limiter.stats.storage_errors == 0


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:{port}/0",
        "redis+sentinel://127.0.0.1:{port}/mymaster",
        "redis+cluster://127.0.0.1:{port}",
        "valkey+cluster://127.0.0.1:{port}",
    ],
)
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_other_schemes_are_wired_and_fail_over(
    redis_server: RedisServer, tracer_provider: Any, url: str, kind: str
) -> None:
    """TLS, Sentinel and Cluster URIs build limits' storages lazily (no connection at startup)
    and, pointed at a server that is none of these, follow the outage policy instead of failing
    the request."""
    g = guard(tracer_provider, url.format(port=redis_server.port), default="2/minute")
    h = Harness(kind, g)
    assert [h.call()[0] for _ in range(3)] == [200, 200, 429]
    assert g.limiter_stats.local_fallback == 3 and g.limiter_stats.storage_errors >= 1


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_one_round_trip_per_request(redis_server: RedisServer, tracer_provider: Any, kind: str) -> None:
    """With moving or fixed windows on a single Redis, a request's windows (tier, rule and
    token windows alike) are checked and charged in one round trip."""
    from benchmarks.storage import RoundTrips

    rules = [LimitRule(name="tok", limits="100000/minute", unit="tokens")]
    h = Harness(kind, guard(tracer_provider, redis_server.url, default="50/minute;500/day", rules=rules))
    h.call(chat_body(), headers={"x-mode": "json-nousage"})  # connect, load the script
    with RoundTrips() as trips:
        for _ in range(10):
            assert h.call(chat_body(), headers={"x-mode": "json-nousage"})[0] == 200
    assert trips.count == 10


def test_replicas_with_skewed_clocks_share_one_exact_window(
    redis_server: RedisServer, tracer_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moving-window entries are stamped with the Redis server's clock: a replica whose clock is
    61 s ahead (past the window) still counts in the same window, so the limit holds exactly."""
    import time as time_module

    a = Harness("wsgi", guard(tracer_provider, redis_server.url))
    b = Harness("asgi", guard(tracer_provider, redis_server.url))
    assert [a.call()[0] for _ in range(3)] == [200, 200, 200]
    token = make_token()
    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + 61)
    assert [b.call(token=token)[0] for _ in range(3)] == [200, 200, 429]
    monkeypatch.setattr(time_module, "time", real)
    assert a.call()[0] == 429


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_retry_after_of_a_costly_request_on_the_script(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """On Redis (the one-round-trip script) too, a refused request of cost 3 is told when three
    units free up: retrying after ``Retry-After`` is admitted."""
    import time

    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="4 per 2 second", storage_uri=redis_server.url),
        tracer_provider=tracer_provider,
    )
    h = Harness(kind, guard)
    for _ in range(4):
        assert h.call(chat_body())[0] == 200
        time.sleep(0.4)
    status, headers, _ = h.call(chat_body(n=3))
    assert status == 429
    wait = int(headers["retry-after"])
    assert wait >= 1
    time.sleep(wait + 0.05)
    assert h.call(chat_body(n=3))[0] == 200
    h.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_charge_drops_the_expired_entries_of_its_moving_window(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """The script trims the entries that have left the window when it charges, so a window's list
    holds only what still counts (its next check reads the oldest entry, not a binary search),
    and ``limits``' own moving-window reader agrees with the guard's count."""
    import time

    from limits import parse
    from limits.strategies import MovingWindowRateLimiter

    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="5 per 2 second", storage_uri=redis_server.url, key_prefix="trim"),
        tracer_provider=tracer_provider,
    )
    h = Harness(kind, guard)
    key = "trim:LIMITER/c/default/client-1/5/2/second"
    assert [h.call()[0] for _ in range(3)] == [200, 200, 200]
    assert redis_server.cli("LLEN", key).strip() == "3"
    time.sleep(1.0)
    status, headers, _ = h.call()
    assert (status, headers["ratelimit"].split(";")[1]) == (200, "r=1")  # nothing expired: 4 count
    assert redis_server.cli("LLEN", key).strip() == "4"
    time.sleep(1.2)  # the first three have left the window, the fourth has not
    status, headers, _ = h.call()
    assert (status, headers["ratelimit"].split(";")[1]) == (200, "r=3")
    assert redis_server.cli("LLEN", key).strip() == "2"  # the three expired entries are gone
    storage = build_storage(redis_server.url, asynchronous=False, key_prefix="trim")
    stats = MovingWindowRateLimiter(storage).get_window_stats(
        parse("5 per 2 second"), "c", "default", "client-1"
    )
    assert stats.remaining == 3
    assert [h.call()[0] for _ in range(4)] == [200, 200, 200, 429]

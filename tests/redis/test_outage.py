"""The outage policy against a real redis-server stopped mid-run and against a black hole:
``local_fallback``, ``fail_open`` and ``fail_closed``, the circuit breaker with back-off probes,
recovery without a restart, and every fallback decision counted."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from distillguard import Guard, LimitConfig
from distillguard.detectors.defaults import default_detectors
from tests.helpers import jwt_config
from tests.limiting.apps import Harness
from tests.servers import BlackHole, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

KEY = "dg:LIMITER/c/default/client-1/4/1/minute"


def harness(kind: str, url: str, tracer_provider: Any, **limits: Any) -> Harness:
    options: dict[str, Any] = {
        "default": "4/minute",
        "storage_uri": url,
        "breaker_threshold": 2,
        "breaker_base_delay": 0.2,
        "breaker_max_delay": 0.4,
    }
    options.update(limits)
    return Harness(
        kind, Guard(jwt=jwt_config(), limits=LimitConfig(**options), tracer_provider=tracer_provider)
    )


def timed(h: Harness) -> tuple[int, dict[str, str], bytes, float]:
    start = time.perf_counter()
    status, headers, body = h.call()
    return status, headers, body, time.perf_counter() - start


def span_errors(exporter: Any) -> list[str]:
    out: list[str] = []
    for span in exporter.get_finished_spans():
        if span.name == "distillguard.guard":
            out.extend(span.attributes.get("distillguard.errors", ()))
    return out


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_local_fallback_when_redis_stops_then_recovery_without_restart(
    redis_server: RedisServer, tracer_provider: Any, span_exporter: Any, kind: str
) -> None:
    """Redis stopped mid-run: requests are limited per replica on local memory, fast, counted
    and visible on the span; once Redis is back a back-off probe returns to it."""
    h = harness(kind, redis_server.url, tracer_provider)
    stats = h.guard.limiter_stats
    assert [h.call()[0] for _ in range(2)] == [200, 200]
    assert redis_server.cli("LLEN", KEY).strip() == "2"

    redis_server.stop()
    results = [timed(h) for _ in range(6)]
    assert [r[0] for r in results] == [200, 200, 200, 200, 429, 429]  # local counts start at 0
    assert max(r[3] for r in results) < 0.2  # a refused connection fails at once
    assert stats.local_fallback == 6 and stats.storage_errors == 2 and stats.breaker_opened == 1
    assert stats.short_circuited == 4  # the open breaker skipped Redis
    errors = span_errors(span_exporter)
    assert "limiter:fallback:StorageError" in errors and "limiter:fallback:breaker_open" in errors

    redis_server.start()
    time.sleep(0.25)  # past the first back-off
    status, _, _ = h.call()
    assert status == 200 and stats.recoveries == 1 and stats.probes == 1
    assert redis_server.cli("LLEN", KEY).strip() == "1"  # counting on Redis again (fresh server)
    assert h.limiter.breaker.is_open is False


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_fail_open_admits_uncounted_and_counts_the_decisions(
    redis_server: RedisServer, tracer_provider: Any, span_exporter: Any, kind: str
) -> None:
    """``fail_open``: with Redis down every request is admitted, and each is counted."""
    h = harness(kind, redis_server.url, tracer_provider, outage="fail_open")
    redis_server.stop()
    assert {h.call()[0] for _ in range(8)} == {200}
    assert h.guard.limiter_stats.fail_open == 8
    assert h.guard.limiter_stats.fallback_decisions == 8
    assert "limiter:open:StorageError" in span_errors(span_exporter)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_fail_closed_refuses_with_503_limiter_unavailable(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """``fail_closed``: with Redis down requests get 503 ``limiter_unavailable`` with
    ``Retry-After``, and no RateLimit fields."""
    h = harness(kind, redis_server.url, tracer_provider, outage="fail_closed", outage_retry_after=7)
    assert h.call()[0] == 200
    redis_server.stop()
    for _ in range(3):
        status, headers, body = h.call()
        assert status == 503
        assert headers["retry-after"] == "7"
        assert json.loads(body)["code"] == "limiter_unavailable"
        assert "ratelimit" not in headers
    assert h.guard.limiter_stats.fail_closed == 3


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_black_hole_costs_one_timeout_until_the_breaker_opens(
    black_hole: BlackHole, tracer_provider: Any, kind: str
) -> None:
    """A Redis that accepts and never answers: each of the first requests is decided within
    the 250 ms timeout (plus slack), the breaker opens after 2 failures, later requests skip it
    (fast), and back-off probes retry it (each costing one timeout, then reopening)."""
    h = harness(kind, black_hole.url, tracer_provider)
    stats = h.guard.limiter_stats
    first = [timed(h) for _ in range(2)]
    assert all(0.2 <= r[3] < 0.6 for r in first)
    assert all(r[0] == 200 for r in first)
    fast = [timed(h) for _ in range(5)]
    assert max(r[3] for r in fast) < 0.05
    assert stats.breaker_opened == 1 and stats.short_circuited == 5
    time.sleep(0.25)
    probe = timed(h)
    assert 0.2 <= probe[3] < 0.6 and stats.probes == 1 and stats.breaker_opened == 2
    assert timed(h)[3] < 0.05  # reopened with a longer back-off
    assert stats.local_fallback == 9
    assert [h.call()[0] for _ in range(2)] == [429, 429]  # 4/minute held locally


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_black_hole_with_shared_detector_state_costs_one_timeout(
    black_hole: BlackHole, tracer_provider: Any, kind: str
) -> None:
    """With the detectors' state shared, a request whose read (with its windows) timed out
    does not wait on the write too: one timeout per request until the breaker opens, then
    none, and the detectors still run on the replica's own state."""
    options = {"default": "100/minute", "storage_uri": black_hole.url, "breaker_threshold": 2}
    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(**options, breaker_base_delay=0.2, breaker_max_delay=0.4),
        detectors=default_detectors(),
        tracer_provider=tracer_provider,
    )
    h = Harness(kind, guard)
    first = [timed(h) for _ in range(2)]
    assert all(r[0] == 200 and 0.2 <= r[3] < 0.45 for r in first), [r[3] for r in first]
    fast = [timed(h) for _ in range(3)]
    assert max(r[3] for r in fast) < 0.1
    share = guard.state_share
    assert share is not None and share.failed == 5 and share.saved == 0
    timing = next(d for d in guard.detectors if d.name == "volume_timing")
    assert timing.states.peek("client-1").n == 4  # type: ignore[union-attr]  # 4 gaps: its own state


def test_black_hole_at_startup_never_blocks_construction(black_hole: BlackHole, tracer_provider: Any) -> None:
    """Building a guard and its middleware against a dead storage opens no connection and
    takes no time."""
    start = time.perf_counter()
    Harness("asgi", Guard(jwt=jwt_config(), limits=LimitConfig(storage_uri=black_hole.url)))
    Harness("wsgi", Guard(jwt=jwt_config(), limits=LimitConfig(storage_uri=black_hole.url)))
    assert time.perf_counter() - start < 0.1
    assert black_hole.accepted == []


def test_redis_errors_replies_take_the_outage_path(redis_server: RedisServer, tracer_provider: Any) -> None:
    """A Redis that answers with errors (here: OOM under a tiny maxmemory) is an outage, not a
    500: the request follows the policy."""
    h = harness("wsgi", redis_server.url, tracer_provider)
    redis_server.cli("CONFIG", "SET", "maxmemory", "1")
    redis_server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
    try:
        assert [h.call()[0] for _ in range(5)] == [200, 200, 200, 200, 429]
        assert h.guard.limiter_stats.local_fallback == 5
    finally:
        redis_server.cli("CONFIG", "SET", "maxmemory", "0")


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_read_only_replica_takes_the_outage_path(
    redis_server: RedisServer, tracer_provider: Any, kind: str
) -> None:
    """A Redis that became a read-only replica (a failover seen through a stale address)
    answers every write with ``READONLY``: an outage, not a 500; once it is a master again the
    windows count there."""
    from tests.servers import free_ports

    (dead,) = free_ports(1)
    h = harness(kind, redis_server.url, tracer_provider)
    redis_server.cli("REPLICAOF", "127.0.0.1", str(dead))
    try:
        assert [h.call()[0] for _ in range(5)] == [200, 200, 200, 200, 429]
        assert h.guard.limiter_stats.local_fallback >= 5
    finally:
        redis_server.cli("REPLICAOF", "NO", "ONE")
    redis_server.cli("FLUSHALL")
    deadline = time.monotonic() + 10  # the breaker backs off before it tries the storage again
    while not redis_server.cli("KEYS", "*").strip() and time.monotonic() < deadline:
        h.call()
        time.sleep(0.1)
    assert redis_server.cli("KEYS", "*").strip()  # windows are counted there again


@pytest.mark.parametrize("scheme", ["redis+sentinel", "valkey", "rediss"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_black_hole_behind_other_schemes_costs_one_timeout(
    black_hole: BlackHole, tracer_provider: Any, scheme: str, kind: str
) -> None:
    """Sentinel, Valkey and TLS clients get the same short timeouts and no client-side retries:
    a black hole costs one 250 ms timeout per request (redis-py's default retries made a
    Sentinel lookup take about 3 s)."""
    path = "/mymaster" if scheme.endswith("sentinel") else "/0"
    url = f"{scheme}://127.0.0.1:{black_hole.port}{path}"
    h = harness(kind, url, tracer_provider, breaker_threshold=5)
    h.call()  # first request: imports, client construction
    results = [timed(h) for _ in range(3)]
    assert all(r[0] == 200 for r in results)
    assert all(r[3] < 0.6 for r in results), [r[3] for r in results]

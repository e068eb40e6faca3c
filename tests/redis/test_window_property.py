"""Property: with a tier window and a route rule, any sequence of requests is admitted exactly as
a model that never counts refused requests predicts (each strategy, memory and Redis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from opentelemetry.trace import NoOpTracerProvider

from distillguard import Guard, LimitConfig
from distillguard.limiting import LimitRule
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

TIER, ROUTE = 6, 3
_clients = itertools.count()
STRATEGIES = ["moving-window", "fixed-window", "sliding-window-counter"]


@pytest.fixture(scope="module")
def harnesses(redis_module_server: RedisServer) -> dict[str, Harness]:
    rules = [LimitRule(name="route", limits=f"{ROUTE}/minute", routes=["/a"])]
    out = {}
    for storage in ("memory://", redis_module_server.url):
        for strategy in STRATEGIES:
            config = LimitConfig(
                default=f"{TIER}/minute", strategy=strategy, rules=rules, storage_uri=storage
            )
            guard = Guard(jwt=jwt_config(), limits=config, tracer_provider=NoOpTracerProvider())
            out[f"{strategy}-{storage.split(':')[0]}"] = Harness("wsgi", guard)
    return out


@pytest.mark.parametrize("which", [f"{s}-{k}" for s in STRATEGIES for k in ("memory", "redis")])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths=st.lists(st.sampled_from(["/a", "/b"]), min_size=1, max_size=12))
def test_refused_requests_never_count(harnesses: dict[str, Harness], which: str, paths: list[str]) -> None:
    """Every response matches the model; a refused ``/a`` never uses up the tier window."""
    h = harnesses[which]
    token = make_token(sub=f"w-{next(_clients)}")
    tier = route = 0
    for path in paths:
        status = h.call(token=token, path=path)[0]
        fits = tier < TIER and (path != "/a" or route < ROUTE)
        assert status == (200 if fits else 429), (path, tier, route)
        if fits:
            tier += 1
            route += path == "/a"
    assert h.guard.limiter_stats.storage_errors == 0

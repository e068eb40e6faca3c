"""Property: whatever the sequence of requests and responses, a token window holds exactly the
tokens its admitted requests used, refused requests hold nothing, and nothing is counted twice
(memory and Redis, ASGI and WSGI)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from distillguard import Guard, LimitConfig
from distillguard.limiting import LimitRule
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

LIMIT = 2000
PROMPT = 10  # 40 characters / 4
_clients = itertools.count()

step = st.tuples(
    st.integers(min_value=0, max_value=1500),  # max_tokens
    st.sampled_from(["json", "json-nousage", "sse", "sse-nousage", "error"]),
    st.integers(min_value=0, max_value=900),  # completion tokens reported / deltas streamed
)


def _actual(mode: str, max_tokens: int, used: int) -> int:
    if mode in ("json", "sse"):
        return PROMPT + used
    if mode == "sse-nousage":
        return PROMPT + used  # one token per delta
    if mode == "error":
        return 0
    return PROMPT + max_tokens  # no usage on a success: the estimate stays


@pytest.fixture(scope="module")
def harnesses(redis_module_server: RedisServer, tracer_provider_module: Any) -> dict[str, Harness]:
    rules = [LimitRule(name="tok", limits=f"{LIMIT}/minute", unit="tokens")]
    out = {}
    for storage in ("memory://", redis_module_server.url):
        for kind in ("asgi", "wsgi"):
            config = LimitConfig(default="100000/minute", rules=rules, storage_uri=storage)
            guard = Guard(jwt=jwt_config(), limits=config, tracer_provider=tracer_provider_module)
            out[f"{kind}-{storage.split(':')[0]}"] = Harness(kind, guard)
    return out


@pytest.fixture(scope="module")
def tracer_provider_module() -> Any:
    from opentelemetry.trace import NoOpTracerProvider

    return NoOpTracerProvider()


@pytest.mark.parametrize("which", ["asgi-memory", "wsgi-memory", "asgi-redis", "wsgi-redis"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=8))
def test_window_holds_exactly_what_admitted_requests_used(
    harnesses: dict[str, Harness], which: str, steps: list[tuple[int, str, int]]
) -> None:
    """Replay random requests; after each, the window holds the sum of actual usage."""
    h = harnesses[which]
    client = f"prop-{next(_clients)}"
    token = make_token(sub=client)
    held = 0
    for max_tokens, mode, used in steps:
        estimate = PROMPT + max_tokens
        headers = {"x-mode": mode, "x-usage": f"{PROMPT},{used}", "x-deltas": str(used)}
        status, _, _ = h.call(chat_body(max_tokens=max_tokens), token=token, headers=headers)
        if held + estimate > LIMIT:
            assert status == 429
        else:
            assert status in (200, 500)
            held += _actual(mode, max_tokens, used)
        assert _window(h, client) == held


def _window(h: Harness, client: str) -> int:
    from limits import parse

    item = parse(f"{LIMIT}/minute")
    key = item.key_for("r", "tok", client)
    storage = h.limiter.storage
    if h.limiter.remote:
        import redis

        port = int(h.guard.plan.config.storage_uri.rsplit(":", 1)[1].split("/")[0])
        value = redis.Redis(port=port).get(f"dg:{key}")
        return int(value or 0)
    return int(storage.table.get(key))

"""At ASGI lifespan startup the middleware asks the limit storage once whether it answers: a
Redis that is down (refusing, or a black hole) is reported in the log before the first request,
naming the outage policy, and never delays startup by more than the probe's timeout."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from distillguard import DistillGuardMiddleware, Guard, LimitConfig
from tests.helpers import jwt_config
from tests.servers import BlackHole, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]


async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def start_and_stop(url: str) -> tuple[list[str], float]:
    """Run the guarded app's lifespan; the messages it sent and the seconds it took."""
    middleware = DistillGuardMiddleware(
        lifespan_app, guard=Guard(jwt=jwt_config(), limits=LimitConfig(storage_uri=url))
    )
    events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(events)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    started = time.monotonic()
    anyio.run(middleware, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent, time.monotonic() - started


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "does not answer at startup" in r.getMessage()]


def test_a_running_redis_is_quiet(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="distillguard"):
        sent, _ = start_and_stop(redis_server.url)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert warnings(caplog) == []


def test_a_stopped_redis_is_reported_at_startup(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.stop()
    with caplog.at_level("WARNING", logger="distillguard"):
        sent, _ = start_and_stop(redis_server.url)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    (message,) = warnings(caplog)
    assert "'local_fallback'" in message


def test_a_black_hole_delays_startup_by_the_probe_timeout_at_most(
    black_hole: BlackHole, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="distillguard"):
        sent, seconds = start_and_stop(black_hole.url)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert seconds < 4.0 and len(warnings(caplog)) == 1

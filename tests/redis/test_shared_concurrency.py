"""The concurrency cap on a real redis-server: one cap across replicas (leases in a sorted set
per client), given back on every path, renewed while an answer streams, freed by the lease
running out when a replica dies, and the outage policy while Redis is down."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import websockets.sync.client as websockets_sync
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from distillguard import (
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    LimitConfig,
    Policy,
)
from distillguard.limiting.concurrency import slot_key
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import (
    LLMApp,
    assert_capped_while_held,
    assert_released_on_every_asgi_path,
    llm_wsgi_app,
    wsgi_call,
)
from tests.servers import RedisServer, serve_in_thread

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

LEASES = "dg:" + slot_key("client-1")


def guard(url: str, tracer_provider: Any, *, cap: int = 1, shadow: bool = False, **limits: Any) -> Guard:
    options: dict[str, Any] = {"default": "1000/minute", "storage_uri": url, "concurrency": cap}
    options.update(limits)
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(**options),
        policy=Policy(shadow=shadow),
        tracer_provider=tracer_provider,
    )


def leases(server: RedisServer) -> int:
    """The live leases of ``client-1`` in Redis."""
    return int(server.cli("ZCARD", LEASES).strip())


def held_wsgi(mw: DistillGuardWSGIMiddleware) -> tuple[int, Any, threading.Event]:
    """A WSGI stream held open (``x-mode: hold``) until the returned event is set."""
    release = threading.Event()
    status, _, stream = wsgi_call(
        mw, token=make_token(), headers={"x-mode": "hold"}, extra={"test.release": release}, consume=False
    )
    return status, stream, release


# -- one cap across replicas -------------------------------------------------------------------


def test_the_cap_holds_across_replicas_wsgi(redis_server: RedisServer, tracer_provider: Any) -> None:
    """Two replicas on one Redis: while replica A streams to the client, replica B refuses its
    second request (429 ``concurrency-1``); once A's stream is over B admits it. The lease
    appears in Redis while the stream is open and is gone after."""
    a = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider))
    b = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider))
    status, stream, release = held_wsgi(a)
    assert status == 200 and leases(redis_server) == 1
    refused = wsgi_call(b, token=make_token())
    assert refused[0] == 429 and b"concurrency-1" in refused[2]
    release.set()
    assert b"[DONE]" in b"".join(stream)
    stream.close()
    assert leases(redis_server) == 0
    assert wsgi_call(b, token=make_token())[0] == 200
    assert leases(redis_server) == 0


def test_per_process_scope_counts_each_replica_apart(redis_server: RedisServer, tracer_provider: Any) -> None:
    """``concurrency_scope="process"``: each replica counts its own (the client holds one
    stream on each), and nothing is written to Redis."""
    options = {"concurrency_scope": "process"}
    a = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, **options))
    b = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, **options))
    status, stream, release = held_wsgi(a)
    assert status == 200 and leases(redis_server) == 0
    assert wsgi_call(a, token=make_token())[0] == 429  # the same replica: its own count
    assert wsgi_call(b, token=make_token())[0] == 200  # another replica: its own count
    release.set()
    b"".join(stream)
    stream.close()


@pytest.mark.anyio
async def test_the_cap_holds_across_replicas_asgi(redis_server: RedisServer, tracer_provider: Any) -> None:
    """ASGI: a stream held on replica A; replica B refuses, then admits once A's stream ends."""
    app_a, app_b = LLMApp(), LLMApp()
    a = DistillGuardMiddleware(app_a, guard=guard(redis_server.url, tracer_provider))
    b = DistillGuardMiddleware(app_b, guard=guard(redis_server.url, tracer_provider))
    try:
        await assert_capped_while_held(a, app_a, b, lambda: leases(redis_server))
    finally:
        await a._perform.limiter.aclose()
        await b._perform.limiter.aclose()


# -- given back on every path -------------------------------------------------------------------


@pytest.mark.anyio
async def test_asgi_gives_the_lease_back_on_every_path(
    redis_server: RedisServer, tracer_provider: Any
) -> None:
    """The lease goes back when the client disconnects, when the server cancels the request's
    task (the release is shielded), when ``send`` fails (the client left), and when the app
    raises."""
    g = guard(redis_server.url, tracer_provider)
    built: list[DistillGuardMiddleware] = []

    def middleware(app: LLMApp) -> DistillGuardMiddleware:
        built.append(DistillGuardMiddleware(app, guard=g))
        return built[-1]

    try:
        await assert_released_on_every_asgi_path(middleware, lambda: leases(redis_server))
    finally:
        for each in built:
            await each._perform.limiter.aclose()


def test_wsgi_gives_the_lease_back_on_early_close_and_app_error(
    redis_server: RedisServer, tracer_provider: Any
) -> None:
    """WSGI: the server closing a response early (the client left) and an app raising
    mid-stream both give the lease back."""
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider))
    status, stream, release = held_wsgi(mw)
    assert status == 200 and leases(redis_server) == 1
    next(iter(stream))
    stream.close()  # before the end
    assert leases(redis_server) == 0
    release.set()

    _, _, failing = wsgi_call(mw, token=make_token(), headers={"x-mode": "raise"}, consume=False)
    with pytest.raises(RuntimeError, match="model crashed"):
        b"".join(failing)
    assert leases(redis_server) == 1  # until the server closes it, as PEP 3333 requires
    failing.close()
    assert leases(redis_server) == 0


def test_a_refused_request_takes_no_lease(redis_server: RedisServer, tracer_provider: Any) -> None:
    """At the cap the request is refused and leaves no lease behind; a request refused by a
    window never takes one."""
    g = guard(redis_server.url, tracer_provider, default="2/minute")
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g)
    status, stream, release = held_wsgi(mw)
    assert status == 200
    assert [wsgi_call(mw, token=make_token())[0] for _ in range(3)] == [429, 429, 429]
    assert leases(redis_server) == 1
    release.set()
    b"".join(stream)
    stream.close()
    # the two windows' quota: the held stream and nothing else (the cap's refusals refunded)
    assert wsgi_call(mw, token=make_token())[0] == 200
    assert wsgi_call(mw, token=make_token())[0] == 429
    assert leases(redis_server) == 0


def test_shadow_mode_admits_past_the_cap(redis_server: RedisServer, tracer_provider: Any) -> None:
    """In shadow mode a request over the cap is admitted."""
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, shadow=True))
    status, stream, release = held_wsgi(mw)
    assert status == 200
    assert wsgi_call(mw, token=make_token())[0] == 200
    release.set()
    b"".join(stream)
    stream.close()
    assert leases(redis_server) == 0


# -- leases: running out and renewal ------------------------------------------------------------


def test_a_dead_replicas_lease_runs_out(redis_server: RedisServer, tracer_provider: Any) -> None:
    """A replica that dies holding a slot never releases it: the other replicas refuse the
    client until the lease runs out (``concurrency_lease``), then admit it."""
    dead = DistillGuardWSGIMiddleware(
        llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, concurrency_lease=1.0)
    )
    alive = DistillGuardWSGIMiddleware(
        llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, concurrency_lease=1.0)
    )
    status, _, release = held_wsgi(dead)  # the stream is never read nor closed: the replica is gone
    assert status == 200 and leases(redis_server) == 1
    assert wsgi_call(alive, token=make_token())[0] == 429
    time.sleep(1.1)
    assert wsgi_call(alive, token=make_token())[0] == 200
    release.set()


def _slow_stream(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI answer streaming one event every 0.2 s for about 2.4 s."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("content-type", "text/event-stream")])

    def events() -> Iterator[bytes]:
        for i in range(12):
            time.sleep(0.2)
            yield f"data: {i}\n\n".encode()

    return events()


def test_a_streaming_answer_renews_its_lease(redis_server: RedisServer, tracer_provider: Any) -> None:
    """An answer that streams for longer than its lease (1 s) keeps its slot: the lease is
    renewed as events pass, so another replica still refuses the client after 1.6 s."""
    g = guard(redis_server.url, tracer_provider, concurrency_lease=1.0)
    streaming = DistillGuardWSGIMiddleware(_slow_stream, guard=g)
    other = DistillGuardWSGIMiddleware(
        llm_wsgi_app, guard=guard(redis_server.url, tracer_provider, concurrency_lease=1.0)
    )
    status, _, stream = wsgi_call(streaming, token=make_token(), consume=False)
    assert status == 200
    body: list[bytes] = []
    reader = threading.Thread(target=lambda: body.extend(stream))
    reader.start()
    time.sleep(1.6)
    assert wsgi_call(other, token=make_token())[0] == 429  # renewed: still held
    reader.join(10)
    stream.close()
    assert len(body) == 12 and leases(redis_server) == 0
    assert wsgi_call(other, token=make_token())[0] == 200


async def ticking(websocket: WebSocket) -> None:
    """Accept, then send a tick every 0.2 s until the client says ``stop``."""
    await websocket.accept()
    stop = asyncio.ensure_future(websocket.receive_text())
    while not stop.done():
        await websocket.send_text("tick")
        await asyncio.sleep(0.2)
    await websocket.close()


async def listening(websocket: WebSocket) -> None:
    """Accept, then only listen (an upload: the client talks, the server says nothing)."""
    await websocket.accept()
    while (await websocket.receive_text()) != "stop":
        pass
    await websocket.close()


def test_a_websocket_holds_and_renews_its_lease(redis_server: RedisServer, tracer_provider: Any) -> None:
    """A WebSocket connection holds its client's slot as long as it is open, through real
    uvicorn: renewed as messages go out or come in (past its 1 s lease), given back when it
    closes."""
    g = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(storage_uri=redis_server.url, concurrency=1, concurrency_lease=1.0),
        tracer_provider=tracer_provider,
        websockets="authenticate",
    )
    routes = [WebSocketRoute("/v1/realtime", ticking), WebSocketRoute("/v1/upload", listening)]
    app = DistillGuardMiddleware(Starlette(routes=routes), guard=g)
    with serve_in_thread(app, lifespan="on") as base:  # the shutdown closes the Redis connections
        url = base.replace("http://", "ws://") + "/v1/realtime"
        headers = {"authorization": f"Bearer {make_token()}"}
        with websockets_sync.connect(url, additional_headers=headers, open_timeout=5) as ws:
            assert ws.recv() == "tick" and leases(redis_server) == 1
            deadline = time.monotonic() + 1.6
            while time.monotonic() < deadline:
                ws.recv()
            with pytest.raises(InvalidStatus) as refused:
                websockets_sync.connect(url, additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 429
            ws.send("stop")
        deadline = time.monotonic() + 2
        while leases(redis_server) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert leases(redis_server) == 0
        upload = base.replace("http://", "ws://") + "/v1/upload"
        with websockets_sync.connect(upload, additional_headers=headers, open_timeout=5) as ws:
            deadline = time.monotonic() + 1.6  # the client's messages renew it too
            while time.monotonic() < deadline:
                ws.send("chunk")
                time.sleep(0.2)
            with pytest.raises(InvalidStatus) as refused:
                websockets_sync.connect(url, additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 429
            ws.send("stop")


# -- Redis down -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outage", "second"), [("local_fallback", 429), ("fail_open", 200), ("fail_closed", 503)]
)
def test_the_outage_policy_applies_to_the_cap(
    redis_server: RedisServer, tracer_provider: Any, outage: str, second: int
) -> None:
    """With Redis down, ``local_fallback`` caps in process, ``fail_open`` admits uncounted and
    ``fail_closed`` answers 503 ``limiter_unavailable``; never a 500 or a hang."""
    g = guard(
        redis_server.url,
        tracer_provider,
        default="",  # no window: the cap alone meets the outage
        outage=outage,
        breaker_threshold=1,
        breaker_base_delay=30.0,
        breaker_max_delay=30.0,
    )
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g)
    redis_server.stop()
    started = time.perf_counter()
    status, stream, release = held_wsgi(mw)
    if outage == "fail_closed":
        assert status == 503
        assert wsgi_call(mw, token=make_token())[0] == 503
        release.set()
        return
    assert status == 200
    status2, _, body = wsgi_call(mw, token=make_token())
    assert status2 == second, body
    assert time.perf_counter() - started < 2.0
    release.set()
    b"".join(stream)
    stream.close()
    assert wsgi_call(mw, token=make_token())[0] == 200  # the local slot came back
    assert g.limiter_stats.storage_errors >= 1

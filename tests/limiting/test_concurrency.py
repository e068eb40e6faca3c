"""The per-client concurrency cap: in-flight requests (streams included) are capped, and the slot
comes back on completion, on client disconnect and on error, under ASGI and WSGI."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import uvicorn

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import (
    LLMApp,
    assert_capped_while_held,
    assert_released_on_every_asgi_path,
    chat_body,
    llm_wsgi_app,
    wsgi_call,
)
from tests.servers import free_port

pytestmark = [pytest.mark.timeout(30)]


def guard(tracer_provider: Any, cap: int = 1) -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000/minute", concurrency=cap),
        tracer_provider=tracer_provider,
    )


def in_flight(g: Guard, client: str = "client-1") -> int:
    return g.plan.concurrency.in_flight(client)


# -- ASGI ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_asgi_cap_refuses_while_a_stream_is_open_and_releases_on_completion(
    tracer_provider: Any,
) -> None:
    """With a cap of 1, a second request gets 429 while a stream is open; the slot comes back
    when the stream completes."""
    g = guard(tracer_provider)
    app = LLMApp()
    mw = DistillGuardMiddleware(app, guard=g)
    await assert_capped_while_held(mw, app, mw, lambda: in_flight(g))


@pytest.mark.anyio
async def test_asgi_releases_on_every_path(tracer_provider: Any) -> None:
    """The slot comes back when the client disconnects mid-stream, when the server cancels the
    request's task, when ``send`` fails because the client left, and when the app raises (the
    exception propagates unchanged)."""
    g = guard(tracer_provider)
    await assert_released_on_every_asgi_path(
        lambda app: DistillGuardMiddleware(app, guard=g), lambda: in_flight(g)
    )


def test_asgi_real_server_disconnect_frees_the_slot_within_a_second(tracer_provider: Any) -> None:
    """Through a real uvicorn: a client that aborts an open stream frees its slot within 1 s."""
    g = guard(tracer_provider)
    app = LLMApp()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(DistillGuardMiddleware(app, guard=g), port=port, lifespan="off", log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        body = chat_body()
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {make_token()}\r\n"
            f"Content-Type: application/json\r\nX-Mode: hold\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert in_flight(g) == 1
        gone = time.monotonic()
        while in_flight(g) and time.monotonic() - gone < 1.0:
            time.sleep(0.01)
        assert in_flight(g) == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- WSGI ------------------------------------------------------------------------------------


def test_wsgi_cap_and_release_on_completion(tracer_provider: Any) -> None:
    """WSGI: a second request is refused while a stream is open; completion frees the slot."""
    g = guard(tracer_provider)
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g)
    release = threading.Event()
    release.set()
    status, _, stream = wsgi_call(
        mw, token=make_token(), headers={"x-mode": "hold"}, extra={"test.release": release}, consume=False
    )
    assert status == 200 and in_flight(g) == 1
    assert wsgi_call(mw, token=make_token())[0] == 429
    assert b"[DONE]" in b"".join(stream)
    stream.close()
    assert in_flight(g) == 0
    assert wsgi_call(mw, token=make_token())[0] == 200


def test_wsgi_releases_on_client_disconnect(tracer_provider: Any) -> None:
    """WSGI: the server closing the response early (the client left) frees the slot."""
    g = guard(tracer_provider)
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g)
    release = threading.Event()
    _, _, stream = wsgi_call(
        mw, token=make_token(), headers={"x-mode": "hold"}, extra={"test.release": release}, consume=False
    )
    assert next(iter(stream)) == b": open\n\n"
    stream.close()
    assert in_flight(g) == 0


def test_wsgi_releases_on_error(tracer_provider: Any) -> None:
    """WSGI: an app raising mid-stream, or before returning, frees the slot."""
    g = guard(tracer_provider)
    mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g)
    with pytest.raises(RuntimeError, match="model crashed"):
        wsgi_call(mw, token=make_token(), headers={"x-mode": "raise"})
    assert in_flight(g) == 0

    def broken(environ: Any, start_response: Any) -> Any:
        raise ValueError("before the response")

    mw2 = DistillGuardWSGIMiddleware(broken, guard=g)
    with pytest.raises(ValueError, match="before the response"):
        wsgi_call(mw2, token=make_token())
    assert in_flight(g) == 0

"""The per-client concurrency cap: in-flight requests (streams included) are capped, and the slot
comes back on completion, on client disconnect and on error, under ASGI and WSGI."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest
import uvicorn

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import LLMApp, asgi_call, chat_body, llm_wsgi_app, wsgi_call
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


async def _held(
    mw: DistillGuardMiddleware, app: LLMApp, receive_hook: Any = None, send_hook: Any = None
) -> Any:
    """Start a held stream; return the task once the app is streaming."""

    async def receive() -> dict[str, Any]:
        if not getattr(receive, "done", False):
            receive.done = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": chat_body(), "more_body": False}
        if receive_hook is not None:
            return await receive_hook()  # type: ignore[no-any-return]
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if send_hook is not None:
            await send_hook(message)

    from tests.limiting.apps import _scope

    scope = _scope(chat_body(), make_token(), {"x-mode": "hold"}, "/v1/chat/completions", "10.0.0.1")
    task = asyncio.ensure_future(mw(scope, receive, send))
    await asyncio.wait_for(app.started.wait(), 5)
    return task


@pytest.mark.anyio
async def test_asgi_cap_refuses_while_a_stream_is_open_and_releases_on_completion(
    tracer_provider: Any,
) -> None:
    """With a cap of 1, a second request gets 429 while a stream is open; the slot comes back
    when the stream completes."""
    g = guard(tracer_provider)
    app = LLMApp()
    mw = DistillGuardMiddleware(app, guard=g)
    task = await _held(mw, app)
    assert in_flight(g) == 1
    status, _, body = await asgi_call(mw, token=make_token())
    assert status == 429 and b"concurrency-1" in body
    app.release.set()
    await asyncio.wait_for(task, 5)
    assert in_flight(g) == 0
    assert (await asgi_call(mw, token=make_token()))[0] == 200
    assert in_flight(g) == 0


@pytest.mark.anyio
async def test_asgi_releases_on_client_disconnect(tracer_provider: Any) -> None:
    """The client disconnecting mid-stream (``http.disconnect``) frees the slot."""
    g = guard(tracer_provider)
    app = LLMApp()
    mw = DistillGuardMiddleware(app, guard=g)
    gone = asyncio.Event()

    async def disconnect() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    task = await _held(mw, app, receive_hook=disconnect)
    assert in_flight(g) == 1
    gone.set()
    await asyncio.wait_for(task, 5)
    assert app.disconnected and in_flight(g) == 0


@pytest.mark.anyio
async def test_asgi_releases_on_cancellation_and_on_send_failure(tracer_provider: Any) -> None:
    """A server cancelling the request task, or a ``send`` failing because the client left,
    frees the slot."""
    g = guard(tracer_provider)
    app = LLMApp()
    mw = DistillGuardMiddleware(app, guard=g)
    task = await _held(mw, app)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight(g) == 0

    app2 = LLMApp()
    mw2 = DistillGuardMiddleware(app2, guard=g)
    sends = 0

    async def broken_send(message: dict[str, Any]) -> None:
        nonlocal sends
        sends += 1
        if sends > 2:
            raise OSError("client gone")

    task = await _held(mw2, app2, send_hook=broken_send)
    app2.release.set()
    with pytest.raises(OSError):
        await task
    assert in_flight(g) == 0


@pytest.mark.anyio
async def test_asgi_releases_on_app_error(tracer_provider: Any) -> None:
    """An app raising mid-stream frees the slot (the exception propagates unchanged)."""
    g = guard(tracer_provider)
    mw = DistillGuardMiddleware(LLMApp(), guard=g)
    with pytest.raises(RuntimeError, match="model crashed"):
        await asgi_call(mw, token=make_token(), headers={"x-mode": "raise"})
    assert in_flight(g) == 0


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

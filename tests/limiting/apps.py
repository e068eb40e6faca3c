"""Model-server stand-ins for the limit tests (real ASGI and WSGI apps) and small drivers.

``LLMApp`` / ``llm_wsgi_app`` answer a chat request according to ``X-Mode``:

* ``json`` (default): a JSON completion with ``usage`` (``X-Usage: prompt,completion``);
* ``json-nousage``: the same without ``usage``;
* ``sse``: an SSE stream of ``X-Deltas`` content deltas and a final usage chunk;
* ``sse-nousage``: the same stream without the usage chunk;
* ``error``: 500 (or ``X-Status``) with no usage;
* ``crash``: the app raises before answering;
* ``raise``: the app raises after starting the stream;
* ``hold``: starts an SSE stream and waits for ``release`` (an event) before finishing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware

__all__ = ["Harness", "LLMApp", "asgi_call", "chat_body", "llm_wsgi_app", "wsgi_call"]


def chat_body(
    prompt: str = "x" * 40, *, max_tokens: int | None = 100, n: int = 1, model: str = "m1"
) -> bytes:
    """A chat-completions request body."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "n": n}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return json.dumps(body).encode()


def _json_body(mode: str, usage: tuple[int, int]) -> bytes:
    doc: dict[str, Any] = {"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}
    if mode == "json":
        doc["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return json.dumps(doc).encode()


def _sse_events(deltas: int, usage: tuple[int, int] | None) -> list[bytes]:
    events = [
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}).encode() + b"\n\n"
        for i in range(deltas)
    ]
    if usage is not None:
        u = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        events.append(b"data: " + json.dumps({"choices": [], "usage": u}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _options(headers: dict[str, str]) -> tuple[str, tuple[int, int], int]:
    mode = headers.get("x-mode", "json")
    prompt, completion = (int(v) for v in headers.get("x-usage", "10,20").split(","))
    return mode, (prompt, completion), int(headers.get("x-deltas", "5"))


class LLMApp:
    """An ASGI model server stand-in (see the module docstring)."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.disconnected = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.calls += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        mode, usage, deltas = _options(headers)
        if mode == "crash":  # before any answer
            raise RuntimeError("model server bug")
        if mode.startswith("json") or mode == "error":
            status = int(headers.get("x-status", "500")) if mode == "error" else 200
            body = b'{"error":"x"}' if mode == "error" else _json_body(mode, usage)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        if mode == "raise":
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            raise RuntimeError("model crashed")
        if mode == "hold":  # like Starlette's StreamingResponse: stop when the client leaves
            self.started.set()
            await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
            waiter = asyncio.ensure_future(self.release.wait())
            listener = asyncio.ensure_future(receive())
            done, pending = await asyncio.wait({waiter, listener}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if listener in done and listener.result()["type"] == "http.disconnect":
                self.disconnected = True
                return
        for event in _sse_events(deltas, usage if mode == "sse" else None):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def llm_wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI twin of :class:`LLMApp` (``hold`` waits on ``environ["test.release"]``)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
    mode, usage, deltas = _options(headers)
    if mode == "crash":  # before any answer
        raise RuntimeError("model server bug")
    if mode.startswith("json") or mode == "error":
        status = f"{headers.get('x-status', '500')} Error" if mode == "error" else "200 OK"
        start_response(status, [("content-type", "application/json")])
        return [b'{"error":"x"}' if mode == "error" else _json_body(mode, usage)]
    start_response("200 OK", [("content-type", "text/event-stream")])

    def stream() -> Iterator[bytes]:
        if mode == "raise":
            yield b"data: {}\n\n"
            raise RuntimeError("model crashed")
        if mode == "hold":
            yield b": open\n\n"
            release: threading.Event = environ["test.release"]
            release.wait(10)
        yield from _sse_events(deltas, usage if mode == "sse" else None)

    return stream()


def _scope(body: bytes, token: str | None, headers: dict[str, str], path: str, client: str) -> dict[str, Any]:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if token is not None:
        raw.append((b"authorization", f"Bearer {token}".encode()))
    raw.extend((k.lower().encode(), v.encode()) for k, v in headers.items())
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": (client, 5000),
        "server": ("testserver", 80),
    }


async def asgi_call(
    mw: DistillGuardMiddleware,
    body: bytes = b"",
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
    client: str = "10.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One request through ``mw``; ``(status, headers, body)``."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(_scope(body or chat_body(), token, headers or {}, path, client), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    out_headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], out_headers, payload


async def held_stream(
    mw: DistillGuardMiddleware, app: LLMApp, receive_hook: Any = None, send_hook: Any = None
) -> asyncio.Future[Any]:
    """Start a held ASGI stream (``x-mode: hold``) through ``mw``; return its task once the app
    is streaming. ``receive_hook`` answers ``receive()`` after the body (else it never
    returns), ``send_hook`` sees every message sent."""
    from tests.helpers import make_token

    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": chat_body(), "more_body": False}
        if receive_hook is not None:
            return await receive_hook()  # type: ignore[no-any-return]
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if send_hook is not None:
            await send_hook(message)

    scope = _scope(chat_body(), make_token(), {"x-mode": "hold"}, "/v1/chat/completions", "10.0.0.1")
    task = asyncio.ensure_future(mw(scope, receive, send))
    await asyncio.wait_for(app.started.wait(), 5)
    return task


async def assert_capped_while_held(
    holder: DistillGuardMiddleware, app: LLMApp, other: DistillGuardMiddleware, in_flight: Callable[[], int]
) -> None:
    """With a cap of 1: hold a stream through ``holder`` (serving ``app``); ``other`` (the same
    replica or another) refuses the client with 429 ``concurrency-1`` until the stream is over,
    then admits it; ``in_flight()`` counts 1, then 0."""
    from tests.helpers import make_token

    task = await held_stream(holder, app)
    assert in_flight() == 1
    status, _, body = await asgi_call(other, token=make_token())
    assert status == 429 and b"concurrency-1" in body
    app.release.set()
    await asyncio.wait_for(task, 5)
    assert in_flight() == 0
    assert (await asgi_call(other, token=make_token()))[0] == 200
    assert in_flight() == 0


async def assert_released_on_every_asgi_path(
    middleware: Callable[[LLMApp], DistillGuardMiddleware], in_flight: Callable[[], int]
) -> None:
    """Hold a stream through ``middleware(app)`` and end it each way an ASGI request can end
    early: the client disconnects (``http.disconnect``), the server cancels the request's task,
    ``send`` fails (the client left), the app raises; after each ``in_flight()`` must be 0."""
    from tests.helpers import make_token

    app = LLMApp()
    mw = middleware(app)
    gone = asyncio.Event()

    async def disconnect() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    task = await held_stream(mw, app, receive_hook=disconnect)
    assert in_flight() == 1
    gone.set()
    await asyncio.wait_for(task, 5)
    assert app.disconnected and in_flight() == 0

    app = LLMApp()
    task = await held_stream(middleware(app), app)
    assert in_flight() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert in_flight() == 0

    app = LLMApp()
    sends = 0

    async def broken_send(message: dict[str, Any]) -> None:
        nonlocal sends
        sends += 1
        if sends > 2:
            raise OSError("client gone")

    task = await held_stream(middleware(app), app, send_hook=broken_send)
    app.release.set()
    with pytest.raises(OSError):
        await task
    assert in_flight() == 0

    mw = middleware(LLMApp())
    with pytest.raises(RuntimeError, match="model crashed"):
        await asgi_call(mw, token=make_token(), headers={"x-mode": "raise"})
    assert in_flight() == 0
    assert (await asgi_call(mw, token=make_token()))[0] == 200
    assert in_flight() == 0


def wsgi_call(
    mw: DistillGuardWSGIMiddleware,
    body: bytes = b"",
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
    client: str = "10.0.0.1",
    extra: dict[str, Any] | None = None,
    consume: bool = True,
) -> tuple[int, dict[str, str], Any]:
    """One request through ``mw``; ``(status, headers, body bytes or the open iterable)``."""
    import io

    data = body or chat_body()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(data)),
        "REMOTE_ADDR": client,
        "wsgi.input": io.BytesIO(data),
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    environ.update(extra or {})
    status: list[str] = []
    out: dict[str, str] = {}

    def start_response(line: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(line)
        out.update({k.lower(): v for k, v in hdrs})
        return lambda _: None

    result = mw(environ, start_response)
    if not consume:
        return int(status[0][:3]) if status else 0, out, result
    try:
        payload = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0][:3]), out, payload


OPEN: list[Harness] = []
"""ASGI harnesses not closed yet (the test fixtures close those a test created)."""


@pytest.fixture(autouse=True)
def close_harnesses() -> Iterator[None]:
    """Close the ASGI harnesses a test created (their Redis connections and event loops).

    Imported into the conftest of each folder whose tests build harnesses."""
    before = list(OPEN)
    yield
    for harness in [h for h in OPEN if h not in before]:
        harness.close()


def _close_loop(loop: asyncio.AbstractEventLoop, mw: Any) -> None:
    """Close the limiter's connections on their loop, then the loop (from a helper thread when
    this thread is already running another loop)."""
    if loop.is_closed():
        return

    def close() -> None:
        loop.run_until_complete(mw._perform.limiter.aclose())
        loop.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        close()
        return
    helper = threading.Thread(target=close)
    helper.start()
    helper.join()


class Harness:
    """One adapter (``"asgi"`` or ``"wsgi"``) around the stand-in model server, called
    synchronously (the ASGI one through ``anyio.run``, one event loop per call)."""

    def __init__(self, kind: str, guard: Any) -> None:
        self.kind = kind
        self.guard = guard
        self.loop: asyncio.AbstractEventLoop | None = None
        if kind == "asgi":
            self.mw: Any = DistillGuardMiddleware(LLMApp(), guard=guard)
            self.loop = asyncio.new_event_loop()  # one loop, as a server has
            self._finalizer = weakref.finalize(self, _close_loop, self.loop, self.mw)
            OPEN.append(self)
        else:
            self.mw = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard)

    def call(self, body: bytes = b"", **kw: Any) -> tuple[int, dict[str, str], bytes]:
        """One request (a valid token for ``client-1`` unless ``token`` is given)."""
        from tests.helpers import make_token

        kw.setdefault("token", make_token())
        if self.loop is not None:
            return self.loop.run_until_complete(asgi_call(self.mw, body, **kw))
        return wsgi_call(self.mw, body, **kw)  # type: ignore[return-value]

    @property
    def limiter(self) -> Any:
        """The adapter's limiter."""
        return self.mw._perform.limiter

    def close(self) -> None:
        """Close the ASGI harness's connections and loop (idempotent)."""
        if self.loop is not None:
            self._finalizer()
            if self in OPEN:
                OPEN.remove(self)

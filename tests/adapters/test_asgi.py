"""ASGI integrity: body replay, random chunking, streaming, lifespan/websocket scopes, async and
blocking detectors, disconnects. The middleware is called directly with hand-built messages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings, strategies as st

from distillguard import DistillGuardMiddleware, Guard, Policy
from distillguard.telemetry import ATTR_DECISION, ATTR_DETECTOR_SCORE, ATTR_ERRORS
from tests.helpers import (
    STREAM_CHUNKS,
    AsyncStaticDetector,
    BlockingDetector,
    EchoASGIApp,
    RaisingDetector,
    guard_spans,
    make_token,
)
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def http_scope(
    path: str = "/v1/chat/completions", *, token: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A minimal HTTP scope with an optional bearer token and extra headers."""
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    headers.extend((k.encode(), v.encode()) for k, v in extra.pop("headers", {}).items())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": extra.pop("method", "POST"),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    scope.update(extra)
    return scope


class Receiver:
    """The server's ``receive``: hands out ``messages`` in order, then ``http.disconnect``
    once ``disconnect`` is set (blocking until then, as a real server does)."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = list(messages)
        self.calls = 0
        self.disconnect = anyio.Event()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.messages:
            return self.messages.pop(0)
        await self.disconnect.wait()
        return {"type": "http.disconnect"}


def body_messages(body: bytes, cuts: list[int] | None = None) -> list[dict[str, Any]]:
    """``body`` as ``http.request`` messages split at ``cuts`` (one message when ``None``)."""
    points = sorted({c for c in (cuts or []) if 0 < c < len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)] or [b""]
    return [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]


class Sender:
    """Records every message sent to the server."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")


@pytest.fixture
def asgi(guard_factory: Callable[..., Guard]) -> Callable[..., tuple[DistillGuardMiddleware, EchoASGIApp]]:
    """``asgi(receive_again=False, **guard_options)``: the echo app behind the middleware."""

    def build(*, receive_again: bool = False, **options: Any) -> tuple[DistillGuardMiddleware, EchoASGIApp]:
        app = EchoASGIApp(receive_again=receive_again)
        return DistillGuardMiddleware(app, guard=guard_factory(**options)), app

    return build


async def test_second_receive_goes_to_the_server(asgi: Callable[..., Any]) -> None:
    """After the body is replayed once, the app's next ``receive()`` reaches the real
    ``receive`` (it waits for ``http.disconnect``) and never gets a cached ``http.request``."""
    middleware, app = asgi(receive_again=True)
    receive = Receiver(body_messages(b'{"a":1}', [3]))
    send = Sender()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(middleware, http_scope(token=make_token()), receive, send)
            await anyio.wait_all_tasks_blocked()
            # The app is parked in the server's receive, not spinning on a replayed message.
            assert app.calls == [] and receive.calls == 3
            receive.disconnect.set()
    assert app.after_body == [{"type": "http.disconnect"}]
    assert app.calls[0].body == b'{"a":1}'
    assert send.status == 200


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=2048), cuts=st.lists(st.integers(min_value=1, max_value=2047), max_size=12))
def test_random_chunking_is_byte_identical(body: bytes, cuts: list[int]) -> None:
    """However the server splits the body into ``http.request`` messages, the app sees the
    same bytes in one call."""
    from tests.helpers import jwt_config

    async def main() -> None:
        app = EchoASGIApp()
        middleware = DistillGuardMiddleware(app, guard=Guard(jwt=jwt_config()))
        receive = Receiver(body_messages(body, cuts))
        send = Sender()
        await middleware(http_scope(token=make_token()), receive, send)
        assert send.status == 200
        assert [c.body for c in app.calls] == [body]
        assert receive.calls == len(body_messages(body, cuts))

    anyio.run(main)


async def test_streaming_response_one_send_per_chunk(asgi: Callable[..., Any]) -> None:
    """Each ``http.response.body`` of the app is forwarded as its own ``send``, in order, with
    its ``more_body`` flag, and the RateLimit fields are added to the start message."""
    middleware, _ = asgi()
    send = Sender()
    await middleware(http_scope("/stream", token=make_token()), Receiver(body_messages(b"")), send)
    bodies = [m for m in send.messages if m["type"] == "http.response.body"]
    assert [m["body"] for m in bodies] == [*STREAM_CHUNKS, b""]
    assert [m["more_body"] for m in bodies] == [True, True, True, False]
    assert b"ratelimit" in send.headers and send.headers[b"content-type"] == b"text/event-stream"


async def test_streaming_chunks_arrive_before_the_app_finishes(asgi: Callable[..., Any]) -> None:
    """The first chunk reaches the server while the app is still streaming (no buffering)."""
    gate = anyio.Event()
    seen: list[bytes] = []

    async def slow_stream(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await gate.wait()
        await send({"type": "http.response.body", "body": b"last", "more_body": False})

    middleware, _ = asgi()
    middleware.app = slow_stream

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            seen.append(message["body"])

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(middleware, http_scope(token=make_token()), Receiver(body_messages(b"")), send)
            await anyio.wait_all_tasks_blocked()
            assert seen == [b"first"]
            gate.set()
    assert seen == [b"first", b"last"]


async def test_lifespan_passes_through(asgi: Callable[..., Any]) -> None:
    """The ``lifespan`` scope reaches the app untouched: startup and shutdown both run."""
    middleware, app = asgi()
    receive = Receiver([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    send = Sender()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await middleware(scope, receive, send)
    assert app.started and app.stopped
    assert [m["type"] for m in send.messages] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert scope == {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}


async def test_websocket_passes_through(asgi: Callable[..., Any], span_exporter: Any) -> None:
    """A ``websocket`` scope reaches the app untouched (no token needed, no span, no
    ``KeyError`` on a missing ``method``)."""
    middleware, app = asgi()
    scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "subprotocols": []}
    send = Sender()
    await middleware(scope, Receiver([{"type": "websocket.connect"}]), send)
    assert app.websocket_scopes == [scope]
    assert "distillguard" not in scope and "state" not in scope
    assert [m["type"] for m in send.messages] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert guard_spans(span_exporter) == []


async def test_disconnect_before_body_skips_app(
    asgi: Callable[..., Any], caplog: pytest.LogCaptureFixture, span_exporter: Any
) -> None:
    """A client that leaves mid-upload (asgiref #334) gets nothing sent and the app is not
    called; nothing is logged as an error, no span says 500, and no task is left running."""
    middleware, app = asgi()
    before = asyncio.all_tasks()
    for _ in range(20):
        receive = Receiver(
            [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
        )
        send = Sender()
        with anyio.fail_after(5), caplog.at_level("WARNING"):
            await middleware(http_scope(token=make_token()), receive, send)
        assert app.calls == [] and send.messages == []
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert all(
        (s.attributes or {}).get("http.response.status_code") != 500
        for s in span_exporter.get_finished_spans()
    )


class CountingSender(Sender):
    """A :class:`Sender` that notes how many ``receive()`` calls came before its first message."""

    def __init__(self, receive: Receiver) -> None:
        super().__init__()
        self.receive = receive
        self.received_before: int | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.received_before is None:
            self.received_before = self.receive.calls
        await super().__call__(message)


async def test_lying_content_length_is_capped(asgi: Callable[..., Any]) -> None:
    """A Content-Length smaller than the real body does not lift the cap: refused one message
    past the cap, app not called; the rest is read and dropped (bounded in time) before the 413
    is sent, since a server stops reading once the response is complete."""
    middleware, app = asgi(max_body_bytes=100)
    messages = [{"type": "http.request", "body": b"z" * 60, "more_body": True} for _ in range(10)]
    receive = Receiver(messages)
    send = CountingSender(receive)
    with anyio.fail_after(5):
        await middleware(http_scope(token=make_token(), headers={"content-length": "10"}), receive, send)
    assert send.status == 413 and app.calls == []
    assert send.received_before >= 10  # all of it (then a wait for more, bounded), then the 413
    assert send.headers[b"connection"] == b"close"
    assert receive.messages == []  # drained, so the server's close is clean


@pytest.mark.parametrize("declared", [None, "1000"])
async def test_an_oversized_body_is_never_held_past_the_cap_and_one_message(
    asgi: Callable[..., Any], declared: str | None
) -> None:
    """A 32 MiB body in 64 KiB messages, chunked (no Content-Length) or under a lying one, to a
    1 MiB cap: 413, the app not called, and the guard's peak memory while reading stays under
    the cap plus one message (plus a fixed allowance), never near the body's size."""
    import tracemalloc

    cap, size, count = 1 << 20, 1 << 16, 512
    middleware, app = asgi(max_body_bytes=cap)
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent >= count:
            await anyio.sleep(10)  # the client has nothing more to send
        sent += 1
        return {"type": "http.request", "body": bytes(size), "more_body": sent < count}

    send = Sender()
    headers = {} if declared is None else {"content-length": declared}
    tracemalloc.start()
    try:
        with anyio.fail_after(20):
            await middleware(http_scope(token=make_token(), headers=headers), receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert send.status == 413 and app.calls == []
    assert sent * size > 4 * cap  # the guard read well past the cap (and dropped it)
    assert peak < cap + 2 * size + 512 * 1024, peak


async def test_declared_oversize_refused_before_reading(asgi: Callable[..., Any]) -> None:
    """A Content-Length over the cap is refused without keeping any of the body: what arrives
    is read and dropped before the answer (so that the server's close is clean)."""
    middleware, app = asgi(max_body_bytes=100)
    receive = Receiver(body_messages(b"x" * 500))
    send = CountingSender(receive)
    await middleware(http_scope(token=make_token(), headers={"content-length": "500"}), receive, send)
    assert send.status == 413 and app.calls == []
    assert send.received_before == receive.calls == 1 and receive.messages == []


async def test_async_detector_is_awaited(asgi: Callable[..., Any], span_exporter: Any) -> None:
    """An async detector runs under ASGI and its score drives the decision."""
    detector = AsyncStaticDetector(1.0)
    middleware, app = asgi(detectors=[detector])
    send = Sender()
    await middleware(http_scope(token=make_token()), Receiver(body_messages(b"{}")), send)
    assert send.status == 429 and detector.calls == 1 and app.calls == []
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DETECTOR_SCORE.format("async_static")] == 1.0


async def test_blocking_detector_runs_in_a_thread(asgi: Callable[..., Any]) -> None:
    """A ``blocking = True`` detector runs in a worker thread: while it sleeps 0.3 s the event
    loop keeps ticking (no gap near the 0.3 s it would block for)."""

    class Slow(BlockingDetector):
        def score(self, observation: Any) -> Any:
            time.sleep(0.3)
            return super().score(observation)

    detector = Slow(0.0)
    middleware, _ = asgi(detectors=[detector])
    send = Sender()
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def request() -> None:
        await middleware(http_scope(token=make_token()), Receiver(body_messages(b"{}")), send)
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(request)
    assert send.status == 200
    assert len(detector.threads) == 1 and detector.threads[0] != threading.get_ident()
    assert len(gaps) >= 5 and max(gaps) < 0.25  # inline, one gap would be >= 0.3 s


async def test_raising_detector_with_block_policy(asgi: Callable[..., Any], span_exporter: Any) -> None:
    """With ``on_error="block"`` a raising detector refuses the request; the error is on the span."""
    middleware, app = asgi(detectors=[RaisingDetector()], policy=Policy(on_error="block"))
    send = Sender()
    await middleware(http_scope(token=make_token()), Receiver(body_messages(b"{}")), send)
    assert send.status == 429 and app.calls == []
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "block"
    assert list(span.attributes[ATTR_ERRORS]) == ["detector:broken"]


async def test_app_exception_propagates_unchanged(asgi: Callable[..., Any], span_exporter: Any) -> None:
    """The app's exception object reaches the server unchanged; the span records it."""
    middleware, _ = asgi()
    with pytest.raises(RuntimeError, match="app failed") as info:
        await middleware(http_scope("/boom", token=make_token()), Receiver(body_messages(b"")), Sender())
    assert type(info.value) is RuntimeError
    (span,) = guard_spans(span_exporter)
    assert [e.name for e in span.events] == ["exception"]


async def test_scope_state_holds_decision(asgi: Callable[..., Any]) -> None:
    """The app reads the decision, with the verified identity, from ``scope["state"]``."""
    middleware, app = asgi()
    await middleware(http_scope(token=make_token(sub="alice")), Receiver(body_messages(b"{}")), Sender())
    decision = app.calls[0].decision
    assert decision.identity.client_id == "alice" and decision.allowed


def test_refusals_and_streams_through_uvicorn(guard_factory: Callable[..., Guard]) -> None:
    """Through a real uvicorn server: a 2 MB upload over a 1 kB cap gets 413 without hanging,
    the connection after it works, and a stream arrives whole."""
    middleware = DistillGuardMiddleware(EchoASGIApp(), guard=guard_factory(max_body_bytes=1024))
    with serve_in_thread(middleware) as base_url:
        auth = {"authorization": f"Bearer {make_token()}"}
        with httpx.Client(base_url=base_url, timeout=5) as client:
            big = client.post("/v1/chat/completions", content=b"x" * 2_000_000, headers=auth)
            assert big.status_code == 413 and big.json()["code"] == "request_too_large"
            chunked = client.post("/v1/chat/completions", content=iter([b"y" * 800] * 4), headers=auth)
            assert chunked.status_code == 413
            assert client.post("/v1/chat/completions", content=b"{}", headers=auth).status_code == 200
            with client.stream("GET", "/stream", headers=auth) as stream:
                assert b"".join(stream.iter_bytes()) == b"".join(STREAM_CHUNKS)


async def test_concurrent_requests_admit_exactly_the_limit(asgi: Callable[..., Any]) -> None:
    """200 concurrent requests against a limit of 100 get exactly 100 admitted."""
    from distillguard import LimitConfig

    middleware, app = asgi(limits=LimitConfig(default="100/minute"))
    token = make_token()
    senders = [Sender() for _ in range(200)]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for send in senders:
                tg.start_soon(middleware, http_scope(token=token), Receiver(body_messages(b"{}")), send)
    statuses = [s.status for s in senders]
    assert statuses.count(200) == 100 and statuses.count(429) == 100
    assert len(app.calls) == 100


async def test_app_spans_nest_under_the_guard_span(
    asgi: Callable[..., Any], tracer_provider: Any, span_exporter: Any
) -> None:
    """Under a server span, the guard's span is its child and is current while the app runs,
    so the app's own spans nest under it."""
    from opentelemetry.trace import SpanKind

    middleware, app = asgi()
    with tracer_provider.get_tracer("server").start_as_current_span("server", kind=SpanKind.SERVER) as server:
        await middleware(http_scope(token=make_token()), Receiver(body_messages(b"{}")), Sender())
    (span,) = guard_spans(span_exporter)
    assert span.parent is not None and span.parent.span_id == server.get_span_context().span_id
    assert app.calls[0].span_context.span_id == span.context.span_id


async def test_trailers_pass_through(asgi: Callable[..., Any]) -> None:
    """``http.response.trailers`` messages reach the server unchanged, after the body."""

    async def with_trailers(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send(
            {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}
        )

    middleware, _ = asgi()
    middleware.app = with_trailers
    send = Sender()
    await middleware(http_scope(token=make_token()), Receiver(body_messages(b"")), send)
    assert [m["type"] for m in send.messages] == [
        "http.response.start",
        "http.response.body",
        "http.response.trailers",
    ]
    assert send.messages[0]["trailers"] is True
    assert send.messages[2] == {
        "type": "http.response.trailers",
        "headers": [(b"grpc-status", b"0")],
        "more_trailers": False,
    }


async def test_starlette_streaming_response_does_not_spin(asgi: Callable[..., Any]) -> None:
    """Starlette's StreamingResponse polls ``receive()`` for a disconnect while streaming; after
    the replay those calls reach the server and wait (finding 1: a replay that answered every
    call would spin the event loop forever)."""
    from starlette.requests import Request
    from starlette.responses import StreamingResponse

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = await Request(scope, receive).body()

        async def chunks() -> Any:
            yield body
            await anyio.sleep(0.05)
            yield b"end"

        await StreamingResponse(chunks())(scope, receive, send)

    middleware, _ = asgi()
    middleware.app = app
    receive = Receiver(body_messages(b"payload"))
    send = Sender()
    scope = http_scope(token=make_token(), asgi={"version": "3.0", "spec_version": "2.3"})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(middleware, scope, receive, send)
            await anyio.sleep(0.2)
            receive.disconnect.set()
    assert send.body == b"payloadend"
    assert receive.calls <= 3


def test_starlette_add_middleware(guard_factory: Callable[..., Guard]) -> None:
    """``app.add_middleware(DistillGuardMiddleware, guard=...)`` guards a Starlette app whose
    routes read the JSON body and ``request.state.distillguard``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def chat(request: Request) -> JSONResponse:
        payload = await request.json()
        decision = request.state.distillguard
        return JSONResponse({"model": payload["model"], "client": decision.identity.client_id})

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    with TestClient(app) as client:
        ok = client.post(
            "/v1/chat/completions",
            json={"model": "m"},
            headers={"authorization": f"Bearer {make_token(sub='s1')}"},
        )
        assert ok.json() == {"model": "m", "client": "s1"}
        assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 401


def test_starlette_requires_sees_the_token_scopes(guard_factory: Callable[..., Guard]) -> None:
    """The verified client is Starlette's ``request.user`` and its scopes are
    ``request.auth.scopes``: ``@requires("embed")`` admits a token with that scope and refuses
    one without it; anonymous clients (no JWT configured) set no user."""
    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from distillguard.asgi import GuardUser

    @requires("embed")
    async def embed(request: Request) -> JSONResponse:
        assert isinstance(request.user, GuardUser)
        return JSONResponse({"user": request.user.display_name, "scopes": request.auth.scopes})

    app = Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    with TestClient(app) as client:
        allowed = client.post(
            "/v1/embeddings", headers={"authorization": f"Bearer {make_token(scope='embed chat')}"}, json={}
        )
        assert allowed.status_code == 200
        assert allowed.json() == {"user": "client-1", "scopes": ["chat", "embed"]}
        refused = client.post("/v1/embeddings", headers={"authorization": f"Bearer {make_token()}"}, json={})
        assert refused.status_code == 403

    anonymous = Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])
    anonymous.add_middleware(DistillGuardMiddleware, guard=guard_factory(jwt=None))
    with TestClient(anonymous) as client, pytest.raises(AssertionError):
        client.post("/v1/embeddings", json={})  # Starlette's own check: no AuthenticationMiddleware


def test_background_tasks_304_and_head_pass_through(guard_factory: Callable[..., Guard]) -> None:
    """Starlette background tasks still run after the response; a 304 and a HEAD response reach
    the client as the app sent them."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    ran: list[str] = []

    async def chat(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, background=BackgroundTask(ran.append, "after"))

    async def cached(request: Request) -> Response:
        return Response(status_code=304, headers={"etag": '"v1"'})

    async def head(request: Request) -> Response:
        return Response(b"0123456789", media_type="text/plain")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", cached, methods=["GET"]),
            Route("/v1/files", head, methods=["GET", "HEAD"]),
        ]
    )
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    auth = {"authorization": f"Bearer {make_token()}"}
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", headers=auth, json={}).json() == {"ok": True}
        assert ran == ["after"]
        not_modified = client.get("/v1/models", headers=auth)
        assert not_modified.status_code == 304 and not_modified.headers["etag"] == '"v1"'
        assert not_modified.content == b""
        headed = client.head("/v1/files", headers=auth)
        assert headed.status_code == 200 and headed.headers["content-length"] == "10"
        assert headed.content == b""


async def test_pathsend_and_trailers_pass_through(asgi: Callable[..., Any]) -> None:
    """Response extensions (``http.response.pathsend``, trailers) reach the server unchanged."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.pathsend", "path": "/srv/weights.bin"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})

    middleware = DistillGuardMiddleware(app, guard=asgi()[0].guard)
    send = Sender()
    await middleware(
        http_scope(token=make_token()), Receiver([{"type": "http.request", "body": b"{}"}]), send
    )
    kinds = [m["type"] for m in send.messages]
    assert kinds == ["http.response.start", "http.response.pathsend", "http.response.trailers"]
    assert send.messages[1]["path"] == "/srv/weights.bin"
    assert send.messages[2]["headers"] == [(b"x-checksum", b"abc")]


class _Sleepy:
    """An async detector that takes ``seconds``; or a thread one with ``blocking``."""

    name = "sleepy"

    def __init__(self, seconds: float, *, cancel_itself: bool = False) -> None:
        self.seconds = seconds
        self.cancel_itself = cancel_itself

    async def score(self, observation: Any) -> Any:
        from distillguard import DetectorResult

        if self.cancel_itself:  # e.g. a plugin awaiting a task it cancelled
            raise asyncio.CancelledError
        await anyio.sleep(self.seconds)
        return DetectorResult(self.name, 0.0)


class _SleepyThread:
    name = "sleepy"
    blocking = True

    def score(self, observation: Any) -> Any:
        import time

        from distillguard import DetectorResult

        time.sleep(2.0)
        return DetectorResult(self.name, 0.0)


@pytest.mark.parametrize("kind", ["async", "thread", "cancels-itself"])
@pytest.mark.parametrize("on_error", ["ignore", "block"])
async def test_a_slow_or_self_cancelling_detector_is_a_detector_error(
    asgi: Callable[..., Any], kind: str, on_error: str
) -> None:
    """An async or ``blocking`` detector past ``Policy.detector_timeout``, or one letting a
    cancellation of its own escape, is recorded as ``detector:sleepy`` and ``on_error``
    applies; the request is answered at once (never a 500, never a hang)."""
    import time

    from distillguard import Policy

    detector: Any = {
        "async": _Sleepy(5.0),
        "thread": _SleepyThread(),
        "cancels-itself": _Sleepy(0.0, cancel_itself=True),
    }[kind]
    middleware, app = asgi(detectors=[detector], policy=Policy(detector_timeout=0.2, on_error=on_error))
    send = Sender()
    started = time.monotonic()
    with anyio.fail_after(3):
        await middleware(
            http_scope(token=make_token()), Receiver([{"type": "http.request", "body": b"{}"}]), send
        )
    assert time.monotonic() - started < 1.5
    status = send.messages[0]["status"]
    assert status == (429 if on_error == "block" else 200)
    assert len(app.calls) == (0 if on_error == "block" else 1)


async def test_a_real_cancellation_still_cancels(asgi: Callable[..., Any]) -> None:
    """When the request itself is cancelled (the server gives up on it) while a detector runs,
    the cancellation goes through: it is not mistaken for a detector error."""
    from distillguard import Policy

    middleware, app = asgi(detectors=[_Sleepy(5.0)], policy=Policy(detector_timeout=None))
    send = Sender()
    with anyio.move_on_after(0.2) as scope:
        await middleware(
            http_scope(token=make_token()), Receiver([{"type": "http.request", "body": b"{}"}]), send
        )
    assert scope.cancelled_caught and app.calls == [] and send.messages == []

"""WSGI integrity (PEP 3333): input stream handling, response iterables and ``close()``, and
refusals that a real WSGI server accepts."""

from __future__ import annotations

import io
import threading
import wsgiref.simple_server
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from distillguard import ConfigurationError, DistillGuardWSGIMiddleware, Guard
from tests.helpers import AsyncStaticDetector, EchoWSGIApp, guard_spans, make_token

pytestmark = pytest.mark.timeout(30)


class GuardedStream(io.RawIOBase):
    """A ``wsgi.input`` that fails the test if read without a size, and counts bytes read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        assert size is not None and size >= 0, "wsgi.input read without a size"
        chunk = self._data.read(size)
        self.read_bytes += len(chunk)
        return chunk

    def readable(self) -> bool:
        return True


def environ_for(
    path: str = "/v1/chat/completions", *, token: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A complete WSGI environ for ``path``."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SCRIPT_NAME": "",
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    environ.update(extra)
    wsgiref.util.setup_testing_defaults(environ)
    return environ


class StartResponse:
    """Records the status and headers the middleware starts its response with."""

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.status, self.headers = status, headers
        return lambda data: None


@pytest.fixture
def wsgi(guard_factory: Callable[..., Guard]) -> Callable[..., tuple[Any, EchoWSGIApp]]:
    """``wsgi(**guard_options)``: the validated middleware around the echo app."""

    def build(**options: Any) -> tuple[Any, EchoWSGIApp]:
        app = EchoWSGIApp()
        return wsgiref.validate.validator(
            DistillGuardWSGIMiddleware(app, guard=guard_factory(**options))
        ), app

    return build


def call(app: Any, environ: dict[str, Any]) -> tuple[StartResponse, list[bytes]]:
    """Run ``app`` to completion (iterating and closing its result)."""
    start = StartResponse()
    result = app(environ, start)
    try:
        chunks = list(result)
    finally:
        result.close()
    return start, chunks


def test_no_length_no_terminated_never_reads(wsgi: Callable[..., Any]) -> None:
    """Without CONTENT_LENGTH and without ``wsgi.input_terminated`` the input is not read (a
    read without a size could hang); the app sees an empty body."""
    middleware, app = wsgi()
    stream = GuardedStream(b"x" * 100)
    start, _ = call(middleware, environ_for(token=make_token(), **{"wsgi.input": stream}))
    assert start.status.startswith("200")
    assert stream.read_bytes == 0
    assert app.calls[0].body == b"" and app.calls[0].content_length == "0"


def test_terminated_input_read_is_capped(wsgi: Callable[..., Any]) -> None:
    """A terminated chunked input of 10 MB is read only up to the cap (plus one byte), then 413."""
    middleware, app = wsgi(max_body_bytes=1000)
    stream = GuardedStream(b"x" * 10_000_000)
    environ = environ_for(token=make_token(), **{"wsgi.input": stream, "wsgi.input_terminated": True})
    start, chunks = call(middleware, environ)
    assert start.status.startswith("413")
    assert stream.read_bytes <= 1001
    assert app.calls == []
    assert b"request_too_large" in b"".join(chunks)


def test_content_length_body_reaches_app(wsgi: Callable[..., Any]) -> None:
    """With CONTENT_LENGTH the exact bytes reach the app, with a matching CONTENT_LENGTH."""
    middleware, app = wsgi()
    body = b'{"prompt":"hello"}'
    stream = GuardedStream(body + b"trailing garbage beyond the declared length")
    environ = environ_for(token=make_token(), **{"wsgi.input": stream, "CONTENT_LENGTH": str(len(body))})
    call(middleware, environ)
    assert app.calls[0].body == body
    assert app.calls[0].content_length == str(len(body))
    assert stream.read_bytes == len(body)


def test_close_is_forwarded_and_span_ends_after(
    guard_factory: Callable[..., Guard], span_exporter: Any
) -> None:
    """The app's iterable is closed through the middleware, and the span ends only then."""
    released: list[str] = []

    def streaming_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            yield b"one"
            yield b"two"
        finally:
            released.append("finally")

    app = wsgiref.validate.validator(DistillGuardWSGIMiddleware(streaming_app, guard=guard_factory()))
    start = StartResponse()
    result = app(environ_for(token=make_token()), start)
    assert next(iter(result)) == b"one"  # the client stops after the first chunk
    assert guard_spans(span_exporter) == []
    result.close()
    assert released == ["finally"]
    (span,) = guard_spans(span_exporter)
    assert span.attributes["http.response.status_code"] == 200


def test_async_detector_refused_under_wsgi(guard_factory: Callable[..., Guard]) -> None:
    """An async detector cannot run under WSGI: ConfigurationError when the middleware is built."""
    guard = guard_factory(detectors=[AsyncStaticDetector()])
    with pytest.raises(ConfigurationError, match="async_static"):
        DistillGuardWSGIMiddleware(EchoWSGIApp(), guard=guard)


def test_environ_carries_identity_and_decision(wsgi: Callable[..., Any]) -> None:
    """The app reads the identity at ``distillguard.identity`` and the decision beside it."""
    middleware, app = wsgi()
    call(middleware, environ_for(token=make_token(sub="bob")))
    assert app.calls[0].identity.client_id == "bob"
    assert app.calls[0].decision.identity == app.calls[0].identity


def test_refusals_through_a_real_wsgi_server(guard_factory: Callable[..., Guard]) -> None:
    """Every refusal (401, 413, 429) is accepted by wsgiref's server, which rejects
    hop-by-hop headers from applications (PEP 3333)."""
    from distillguard import LimitConfig

    guard = guard_factory(max_body_bytes=16, limits=LimitConfig(default="1/minute"))
    app = DistillGuardWSGIMiddleware(EchoWSGIApp(), guard=guard)

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        auth = {"authorization": f"Bearer {make_token()}"}
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.post("/v1/x", content=b"{}").status_code == 401
            too_large = client.post("/v1/x", content=b"x" * 17, headers=auth)
            assert too_large.status_code == 413
            assert too_large.json()["code"] == "request_too_large"
            assert client.post("/v1/x", content=b"{}", headers=auth).status_code == 200
            assert client.post("/v1/x", content=b"{}", headers=auth).status_code == 429
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_concurrent_threads_admit_exactly_the_limit(wsgi: Callable[..., Any]) -> None:
    """16 threads sending 10 requests each against a limit of 50 get exactly 50 admitted."""
    from distillguard import LimitConfig

    middleware, app = wsgi(limits=LimitConfig(default="50/minute"))
    token = make_token()
    statuses: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            start, _ = call(middleware, environ_for(token=token))
            with lock:
                statuses.append(start.status[:3])

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(statuses) == 160
    assert statuses.count("200") == 50 and statuses.count("429") == 110
    assert len(app.calls) == 50


def test_app_spans_nest_under_the_guard_span(
    wsgi: Callable[..., Any], tracer_provider: Any, span_exporter: Any
) -> None:
    """Under a server span, the guard's span is its child and is current while the app runs."""
    from opentelemetry.trace import SpanKind

    middleware, app = wsgi()
    with tracer_provider.get_tracer("server").start_as_current_span("server", kind=SpanKind.SERVER) as server:
        call(middleware, environ_for(token=make_token()))
    (span,) = guard_spans(span_exporter)
    assert span.parent is not None and span.parent.span_id == server.get_span_context().span_id
    assert app.calls[0].span_context.span_id == span.context.span_id


@pytest.mark.parametrize("server", ["werkzeug", "wsgiref"])
def test_a_body_cut_short_is_refused_through_a_real_server(
    guard_factory: Callable[..., Guard], server: str
) -> None:
    """A client that declares 100 bytes, sends 10 and stops sending gets 400 ``incomplete_body``
    (the app never takes a part of a request for the whole), through Werkzeug's threaded server
    and wsgiref."""
    import json
    import socket

    app = EchoWSGIApp()
    middleware = DistillGuardWSGIMiddleware(app, guard=guard_factory())
    if server == "werkzeug":
        from werkzeug.serving import make_server

        httpd: Any = make_server("127.0.0.1", 0, middleware, threaded=True)
    else:
        httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, middleware)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", httpd.server_port), timeout=10) as sock:
            head = (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {make_token()}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"prompt":')
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    finally:
        httpd.shutdown()
        httpd.server_close()
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 400 " in status_line
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["code"] == "incomplete_body"
    assert app.calls == []


@pytest.mark.parametrize("length", ["1_0", "+10", "-1", "10 ", "0x0a", "\u0661\u0660"])
def test_a_content_length_that_is_not_digits_is_refused(
    guard_factory: Callable[..., Guard], length: str
) -> None:
    """``Content-Length`` is digits only (RFC 9110); ``int()`` would read ``+10`` or ``1_0``.
    (No PEP 3333 validator here: it refuses such an environ itself.)"""
    echo = EchoWSGIApp()
    app = DistillGuardWSGIMiddleware(echo, guard=guard_factory())
    environ = environ_for(token=make_token(), CONTENT_LENGTH=length)
    environ["wsgi.input"] = io.BytesIO(b'{"prompt":"x"}')
    start = StartResponse()
    body = b"".join(app(environ, start))
    assert start.status.startswith("400") and b"invalid_content_length" in body and echo.calls == []


def test_one_guard_counts_in_one_table_across_apps_and_adapters(guard_factory: Callable[..., Guard]) -> None:
    """Two WSGI apps and an ASGI app sharing one guard share its memory windows (memory:// is
    per process, not per app), and a thousand middlewares on one guard leave
    ``limiter_stats.snapshot()`` working."""
    import asyncio

    from distillguard import DistillGuardMiddleware, LimitConfig
    from tests.helpers import EchoASGIApp

    guard = guard_factory(limits=LimitConfig(default="5/minute"))
    apps = [DistillGuardWSGIMiddleware(EchoWSGIApp(), guard=guard) for _ in range(2)]
    token = make_token(sub="shared")
    statuses = []
    for i in range(4):
        environ = environ_for(token=token, CONTENT_LENGTH="2")
        environ["wsgi.input"] = io.BytesIO(b"{}")
        statuses.append(call(apps[i % 2], environ)[0].status[:3])
    asgi = DistillGuardMiddleware(EchoASGIApp(), guard=guard)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    for _ in range(2):
        asyncio.run(asgi(dict(scope), receive, send))
    statuses += [str(m["status"]) for m in sent if m["type"] == "http.response.start"]
    assert statuses == ["200"] * 5 + ["429"]
    for _ in range(1000):
        DistillGuardWSGIMiddleware(EchoWSGIApp(), guard=guard)
    assert guard.limiter_stats.snapshot()["memory_evictions"] == 0


def test_the_server_file_wrapper_is_kept_for_sendfile(
    wsgi: Callable[..., Any], guard_factory: Callable[..., Guard], span_exporter: Any
) -> None:
    """An app returning ``wsgi.file_wrapper(...)`` hands the server its own wrapper back (so it
    can use ``sendfile``); the guard's span ends when the server closes it."""
    closed: list[bool] = []

    class File(io.BytesIO):
        def close(self) -> None:
            closed.append(True)
            super().close()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](File(b"weights"), 4)

    middleware = DistillGuardWSGIMiddleware(app, guard=guard_factory())
    environ = environ_for(token=make_token(), CONTENT_LENGTH="2")
    environ["wsgi.input"] = io.BytesIO(b"{}")
    environ["wsgi.file_wrapper"] = wsgiref.util.FileWrapper
    result = middleware(environ, StartResponse())
    assert isinstance(result, wsgiref.util.FileWrapper)
    assert b"".join(result) == b"weights"
    assert guard_spans(span_exporter) == []
    result.close()
    assert closed == [True] and len(guard_spans(span_exporter)) == 1

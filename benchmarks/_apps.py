"""The apps and the request the overhead benchmark measures.

Every app serves ``POST /v1/chat/completions``: it parses the JSON body and returns a small fixed
JSON response. The guarded apps are the bare ones wrapped by distillguard with JWT verification,
two limit windows (high enough never to trip), a span exported through a ``BatchSpanProcessor``
to an exporter that discards it, and a detector set.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import jwt as pyjwt
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from distillguard import (
    DetectorResult,
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    JWTConfig,
    LimitConfig,
    Observation,
    TelemetryConfig,
)

SECRET = b"benchmark-secret-of-at-least-32-bytes!!"
ISSUER = "https://idp.example"
AUDIENCE = "model-api"
PATH = "/v1/chat/completions"
# "60/minute;1000/day"-style: two windows, but high enough that no run ever reaches them.
LIMITS = "1000000000/minute;10000000000/day"
RESPONSE = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'


_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "pa",
    "qu",
    "bre",
    "dan",
    "fel",
    "gor",
    "hin",
]


def chat_body(size: int = 1024, variant: int = 0) -> bytes:
    """An OpenAI-style chat body of ``size`` bytes (for sizes above ~200); each ``variant``
    asks something else, with the same length."""
    base = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": ""},
        ],
        "max_tokens": 256,
        "temperature": 0.7,
    }
    rng = random.Random(variant)
    words = ("".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(size // 4))
    filler = " ".join(words) if variant else _FILLER
    empty = len(json.dumps(base).encode())
    text = (filler * (size // len(filler) + 1))[: max(0, size - empty)]
    base["messages"][1]["content"] = text  # type: ignore[index]
    return json.dumps(base).encode()


_FILLER = "Explain how a transformer attends to earlier tokens in a sequence. "


def chat_bodies(count: int, size: int = 1024) -> list[bytes]:
    """``count`` different chat bodies of the same length (cycled by the runners)."""
    return [chat_body(size, variant) for variant in range(1, count + 1)]


def token(subject: str = "client-1", tier: str = "default") -> str:
    """A valid HS256 JWT for ``subject`` (valid for a day)."""
    now = int(time.time())
    claims = {"sub": subject, "tier": tier, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 86400}
    return pyjwt.encode(claims, SECRET, algorithm="HS256")


class DiscardExporter(SpanExporter):
    """Accepts spans and drops them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def tracer_provider() -> TracerProvider:
    """An SDK provider with a batch processor and a discarding exporter."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    return provider


class TrivialDetector:
    """A detector that scores every request 0."""

    name = "trivial"

    def score(self, observation: Observation) -> DetectorResult:
        return DetectorResult(self.name, 0.0)


def detector_sets() -> dict[str, list[Any]]:
    """The detector sets to measure: the trivial detector, and the default set when it exists."""
    sets: dict[str, list[Any]] = {"trivial detector": [TrivialDetector()]}
    try:
        from distillguard.detectors.defaults import default_detectors
    except ImportError:
        return sets
    sets["default detectors"] = list(default_detectors())
    return sets


def make_guard(
    provider: Any,
    detectors: list[Any],
    limits: str = LIMITS,
    span: str = "child",
    max_keys: int | None = None,
) -> Guard:
    """The guard of the benchmark (default settings apart from these; ``span`` is
    ``TelemetryConfig.span``, ``max_keys`` the memory limit table's key cap)."""
    config = LimitConfig(default=limits)
    return Guard(
        jwt=JWTConfig(algorithms=["HS256"], key=SECRET, issuer=ISSUER, audience=AUDIENCE),
        limits=config if max_keys is None else replace(config, memory_max_keys=max_keys),
        detectors=detectors,
        tracer_provider=provider,
        telemetry=TelemetryConfig(span=span),
    )


# -- ASGI ---------------------------------------------------------------------------------------

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


async def raw_asgi_app(scope: Scope, receive: Any, send: Any) -> None:
    """A bare ASGI app: read the body, parse it, answer a fixed JSON."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    json.loads(body)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"59")],
        }
    )
    await send({"type": "http.response.body", "body": RESPONSE})


def starlette_app() -> Any:
    """A bare Starlette app with the same endpoint."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def completions(request: Request) -> Response:
        await request.json()
        return Response(RESPONSE, media_type="application/json")

    return Starlette(routes=[Route(PATH, completions, methods=["POST"])])


def guarded_starlette(guard: Guard) -> Any:
    """The Starlette app guarded with ``app.add_middleware``."""
    app = starlette_app()
    app.add_middleware(DistillGuardMiddleware, guard=guard)
    return app


def asgi_scope(bearer: str, body: bytes) -> Scope:
    """The scope template of one request (copied per request)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost:8000"),
            (b"user-agent", b"bench/1.0"),
            (b"authorization", f"Bearer {bearer}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def run_asgi(app: ASGIApp, scopes: Sequence[Scope], body: bytes | Sequence[bytes], n: int) -> int:
    """Send ``n`` requests to ``app`` (cycling through ``scopes`` and the bodies, which must
    all have the length the scopes declare); return the CPU time they took
    (ns, every thread of the process: the span exporter counts too)."""
    bodies = [body] if isinstance(body, bytes) else list(body)
    messages = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    kinds = len(messages)
    message = messages[0]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    count = len(scopes)
    start = time.process_time_ns()
    for i in range(n):
        message = messages[i % kinds]
        await app(dict(scopes[i % count]), receive, send)
    elapsed = time.process_time_ns() - start
    if statuses[-1] != 200:
        raise RuntimeError(f"the app answered {statuses[-1]}, not 200")
    return elapsed


# -- WSGI ---------------------------------------------------------------------------------------

WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def raw_wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A bare WSGI app: read the body, parse it, answer a fixed JSON."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    json.loads(environ["wsgi.input"].read(length))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "59")])
    return [RESPONSE]


def flask_app() -> Any:
    """A bare Flask app with the same endpoint."""
    from flask import Flask, request

    app = Flask("bench")

    @app.post(PATH)
    def completions() -> Any:
        request.get_json()
        return app.response_class(RESPONSE, mimetype="application/json")

    return app


def guarded_flask(guard: Guard) -> Any:
    """The Flask app with its ``wsgi_app`` wrapped."""
    app = flask_app()
    app.wsgi_app = DistillGuardWSGIMiddleware(app.wsgi_app, guard=guard)  # type: ignore[method-assign]
    return app


def wsgi_environ(bearer: str, body: bytes) -> dict[str, Any]:
    """The environ template of one request (copied per request, with a fresh input stream)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "localhost:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_AUTHORIZATION": f"Bearer {bearer}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def run_wsgi(app: WSGIApp, environs: Sequence[dict[str, Any]], body: bytes | Sequence[bytes], n: int) -> int:
    """Send ``n`` requests to ``app`` (cycling through ``environs`` and the bodies, which must
    all have the length the environs declare); return the CPU time they took
    (ns, every thread of the process: the span exporter counts too)."""
    bodies = [body] if isinstance(body, bytes) else list(body)
    kinds = len(bodies)
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    count = len(environs)
    bytes_io = io.BytesIO
    start = time.process_time_ns()
    for i in range(n):
        environ = dict(environs[i % count])
        environ["wsgi.input"] = bytes_io(bodies[i % kinds])
        result = app(environ, start_response)
        try:
            for _ in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    elapsed = time.process_time_ns() - start
    if not statuses[-1].startswith("200"):
        raise RuntimeError(f"the app answered {statuses[-1]}, not 200")
    return elapsed

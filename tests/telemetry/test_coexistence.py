"""The guard's span beside the server instrumentations: FastAPI's native telemetry, the contrib
ASGI/FastAPI instrumentation and the contrib Flask instrumentation. Each request must have
exactly one SERVER span; the guard's INTERNAL span is its child when the server span is already
current, and a sibling in the caller's trace (never a demoting parent) when it is not. A request
the guard refuses before an inner instrumentation could see it has the guard's span as its
SERVER span."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastapi
import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.middleware import Middleware

from distillguard import DistillGuardMiddleware, Guard
from distillguard.flask import DistillGuard
from distillguard.telemetry import ATTR_DECISION, SPAN_NAME
from distillguard.telemetry.flask import enrich_flask_spans
from tests.helpers import make_token
from tests.telemetry.apps import CHAT_PATH, chat_body, fastapi_app, flask_app, starlette_app

pytestmark = pytest.mark.anyio

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


async def post(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST a chat request with a valid token through ``app`` (in process, real ASGI)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        all_headers = {"authorization": f"Bearer {make_token()}", "content-type": "application/json"}
        all_headers.update(headers or {})
        return await client.post(CHAT_PATH, content=chat_body(), headers=all_headers)


def split(exporter: InMemorySpanExporter) -> tuple[list[ReadableSpan], ReadableSpan]:
    """(SERVER spans, the one guard span) of the finished spans."""
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    guards = [s for s in spans if s.name == SPAN_NAME]
    assert len(guards) == 1, [s.name for s in spans]
    return servers, guards[0]


def test_fastapi_version_has_native_telemetry() -> None:
    """The installed FastAPI ships native telemetry (>= 0.142), which the next test exercises."""
    major, minor = (int(x) for x in fastapi.__version__.split(".")[:2])
    assert (major, minor) >= (0, 142)
    from fastapi.telemetry import TelemetryConfig  # noqa: F401


async def test_fastapi_native_server_span_is_the_parent(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """FastAPI native: one SERVER span, the guard's span its child, FastAPI's operation spans under ours."""
    app = fastapi_app(telemetry={"tracer_provider": tracer_provider})
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    response = await post(app)
    assert response.status_code == 200
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    server = servers[0]
    assert server.attributes is not None and server.attributes["http.route"] == CHAT_PATH
    assert guard.kind is SpanKind.INTERNAL
    assert guard.parent is not None and guard.parent.span_id == server.context.span_id
    assert guard.context.trace_id == server.context.trace_id
    operations = [s for s in span_exporter.get_finished_spans() if s.name.startswith("fastapi.")]
    assert operations and all(
        s.parent is not None and s.parent.span_id == guard.context.span_id for s in operations
    )


async def test_fastapi_contrib_instrumentor_replaces_native(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """FastAPIInstrumentor beside native telemetry: still one SERVER span, the guard's span its child."""
    app = fastapi_app(telemetry={"tracer_provider": tracer_provider})
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
    try:
        response = await post(app)
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert response.status_code == 200
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    assert guard.parent is not None and guard.parent.span_id == servers[0].context.span_id
    assert servers[0].attributes is not None and servers[0].attributes["http.route"] == CHAT_PATH


async def test_contrib_asgi_middleware_outside_the_guard(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """The contrib ASGI middleware wrapping the guarded app: one SERVER span, guard span child."""
    guarded = DistillGuardMiddleware(starlette_app(), guard=guard_factory())
    app = OpenTelemetryMiddleware(guarded, tracer_provider=tracer_provider, exclude_spans=["receive", "send"])
    response = await post(app)
    assert response.status_code == 200
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    assert guard.parent is not None and guard.parent.span_id == servers[0].context.span_id


async def test_contrib_asgi_middleware_inside_the_guard(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """Contrib middleware inside the guard keeps its SERVER span; both are siblings under traceparent."""
    from starlette.applications import Starlette

    inner = starlette_app()
    app = Starlette(
        routes=inner.routes,
        middleware=[
            Middleware(DistillGuardMiddleware, guard=guard_factory()),
            Middleware(
                OpenTelemetryMiddleware, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
            ),
        ],
    )
    response = await post(app, {"traceparent": TRACEPARENT})
    assert response.status_code == 200
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    server = servers[0]
    assert server.parent is not None and server.parent.span_id == PARENT_ID
    assert guard.parent is not None and guard.parent.span_id == PARENT_ID
    assert guard.context.trace_id == server.context.trace_id == TRACE_ID


async def test_guard_alone_without_traceparent_is_a_root(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Without instrumentation or incoming context the guard's span is a root and no SERVER span exists."""
    app = DistillGuardMiddleware(starlette_app(), guard=guard_factory())
    assert (await post(app)).status_code == 200
    servers, guard = split(span_exporter)
    assert servers == []
    assert guard.parent is None


def _flask(guard: Guard, tracer_provider: Any, *, hook: bool) -> Any:
    app = flask_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)
    DistillGuard(guard).init_app(app, enrich_spans=hook)
    return app


def _flask_post(app: Any, headers: dict[str, str]) -> int:
    client = app.test_client()
    response = client.post(
        "/v1/predict/m1",
        json={"inputs": [1.0, 2.0]},
        headers={"authorization": f"Bearer {make_token()}", **headers},
    )
    response.close()  # ends the WSGI response (and the guard's span)
    return int(response.status_code)


@pytest.mark.parametrize("traceparent", [True, False])
def test_flask_instrumentation_keeps_its_server_span(
    guard_factory: Callable[..., Guard],
    tracer_provider: Any,
    span_exporter: InMemorySpanExporter,
    traceparent: bool,
) -> None:
    """Flask's span stays the one SERVER span; ours is its sibling (traceparent) or its own trace."""
    app = _flask(guard_factory(), tracer_provider, hook=False)
    try:
        assert _flask_post(app, {"traceparent": TRACEPARENT} if traceparent else {}) == 200
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    server = servers[0]
    assert guard.kind is SpanKind.INTERNAL
    if traceparent:
        assert guard.context.trace_id == server.context.trace_id == TRACE_ID
        assert guard.parent is not None and guard.parent.span_id == PARENT_ID
        assert server.parent is not None and server.parent.span_id == PARENT_ID
    else:
        assert guard.parent is None and server.parent is None
        assert guard.context.trace_id != server.context.trace_id
    assert guard.attributes is not None and "http.route" not in guard.attributes  # not visible to WSGI


def test_flask_hook_links_the_spans_and_records_the_route(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """The Flask hook links both spans, puts the decision on Flask's span and the route on ours."""
    app = _flask(guard_factory(), tracer_provider, hook=True)
    try:
        assert _flask_post(app, {}) == 200
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    servers, guard = split(span_exporter)
    assert len(servers) == 1
    server = servers[0]
    assert [link.context.span_id for link in server.links] == [guard.context.span_id]
    assert [link.context.span_id for link in guard.links] == [server.context.span_id]
    assert server.attributes is not None and server.attributes[ATTR_DECISION] == "allow"
    assert guard.attributes is not None and guard.attributes["http.route"] == "/v1/predict/<model>"


def test_flask_hook_without_instrumentation_records_the_route(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Without Flask's instrumentation the hook still gives the guard's span ``http.route``."""
    app = flask_app()
    DistillGuard(guard_factory(), app)
    enrich_flask_spans(app)
    assert _flask_post(app, {}) == 200
    servers, guard = split(span_exporter)
    assert servers == []
    assert guard.attributes is not None and guard.attributes["http.route"] == "/v1/predict/<model>"
    assert guard.links == ()


def test_flask_refusal_gets_the_guard_span_as_its_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """A refusal never reaches Flask: the guard's span, from arrival, is the one SERVER span."""
    import time

    app = _flask(guard_factory(), tracer_provider, hook=True)
    before = time.time_ns()
    try:
        client = app.test_client()
        response = client.post("/v1/predict/m1", json={"inputs": [1.0]}, headers={"traceparent": TRACEPARENT})
        response.close()
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert response.status_code == 401
    servers, guard = split(span_exporter)
    assert servers == [guard]
    assert guard.kind is SpanKind.SERVER
    assert guard.parent is not None and guard.parent.span_id == PARENT_ID
    assert guard.attributes is not None and guard.attributes["http.response.status_code"] == 401
    assert guard.start_time is not None and guard.end_time is not None
    assert before <= guard.start_time <= guard.end_time


async def test_asgi_refusal_with_inner_instrumentation_has_one_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """Inner contrib middleware: refusals get our span as SERVER, allowed requests contrib's."""
    from starlette.applications import Starlette

    app = Starlette(
        routes=starlette_app().routes,
        middleware=[
            Middleware(DistillGuardMiddleware, guard=guard_factory()),
            Middleware(
                OpenTelemetryMiddleware, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
            ),
        ],
    )
    assert (await post(app, {"authorization": "Bearer nope"})).status_code == 401
    servers, guard = split(span_exporter)
    assert servers == [guard] and guard.kind is SpanKind.SERVER
    span_exporter.clear()
    assert (await post(app)).status_code == 200
    servers, guard = split(span_exporter)
    assert len(servers) == 1 and servers[0] is not guard and guard.kind is SpanKind.INTERNAL


async def test_fastapi_native_refusal_keeps_one_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """Under FastAPI's native SERVER span a refusal is still an INTERNAL child of it."""
    app = fastapi_app(telemetry={"tracer_provider": tracer_provider})
    app.add_middleware(DistillGuardMiddleware, guard=guard_factory())
    assert (await post(app, {"authorization": "Bearer nope"})).status_code == 401
    servers, guard = split(span_exporter)
    assert len(servers) == 1 and guard.kind is SpanKind.INTERNAL
    assert guard.parent is not None and guard.parent.span_id == servers[0].context.span_id
    assert servers[0].attributes is not None and servers[0].attributes["http.response.status_code"] == 401


# -- span="enrich": the guard records on the server span instead of starting its own ----------


class _Blocker:
    name = "blocker"

    def score(self, observation: Any) -> Any:
        from distillguard import DetectorResult

        return DetectorResult(self.name, 1.0, ("test",))


async def test_enrich_records_on_the_contrib_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """``span="enrich"`` under the contrib middleware: no guard span; the SERVER span carries
    the decision, the hashed client, the fingerprint and the GenAI attributes, and is ended once."""
    from distillguard import TelemetryConfig
    from distillguard.telemetry import ATTR_CLIENT_ID, ATTR_QUERY_FINGERPRINT
    from distillguard.telemetry.names import GEN_AI_USAGE_OUTPUT

    guard = guard_factory(telemetry=TelemetryConfig(span="enrich"))
    guarded = DistillGuardMiddleware(starlette_app(), guard=guard)
    app = OpenTelemetryMiddleware(guarded, tracer_provider=tracer_provider, exclude_spans=["receive", "send"])
    response = await post(app)
    assert response.status_code == 200
    spans = span_exporter.get_finished_spans()
    assert [s.name for s in spans if s.name == SPAN_NAME] == []
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1
    attributes = dict(servers[0].attributes or {})
    assert attributes[ATTR_DECISION] == "allow"
    assert attributes[ATTR_CLIENT_ID] == guard.telemetry.client_attribute("client-1")
    assert len(str(attributes[ATTR_QUERY_FINGERPRINT])) == 16
    assert attributes[GEN_AI_USAGE_OUTPUT] > 0
    status = attributes.get("http.response.status_code", attributes.get("http.status_code"))
    assert status == 200  # recorded by the span's owner


async def test_enrich_puts_the_decision_event_on_the_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """A block under ``span="enrich"``: the decision event lands on the FastAPI SERVER span."""
    from distillguard import Policy, TelemetryConfig
    from distillguard.telemetry import EVENT_DECISION

    app = fastapi_app(telemetry={"tracer_provider": tracer_provider})
    guard = guard_factory(
        telemetry=TelemetryConfig(span="enrich"), detectors=[_Blocker()], policy=Policy(block=0.9)
    )
    app.add_middleware(DistillGuardMiddleware, guard=guard)
    response = await post(app)
    assert response.status_code == 429
    spans = span_exporter.get_finished_spans()
    assert [s for s in spans if s.name == SPAN_NAME] == []
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1
    server = servers[0]
    assert server.attributes is not None and server.attributes[ATTR_DECISION] == "block"
    assert [e.name for e in server.events].count(EVENT_DECISION) == 1


async def test_enrich_without_a_current_span_starts_the_guard_span(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """With nothing to enrich, ``span="enrich"`` still records the request on the guard's span."""
    from distillguard import TelemetryConfig

    guard = guard_factory(telemetry=TelemetryConfig(span="enrich"))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    assert (await post(app)).status_code == 200
    _, span = split(span_exporter)
    assert span.attributes is not None and span.attributes[ATTR_DECISION] == "allow"


def test_span_mode_is_checked_at_construction() -> None:
    from distillguard import ConfigurationError, TelemetryConfig

    with pytest.raises(ConfigurationError, match="span"):
        TelemetryConfig(span="sibling")


def test_enrich_records_on_the_contrib_wsgi_server_span(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """``span="enrich"`` under the contrib WSGI middleware: one SERVER span with the decision."""
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WSGIMiddleware

    from distillguard import DistillGuardWSGIMiddleware, TelemetryConfig

    app = flask_app()
    guard = guard_factory(telemetry=TelemetryConfig(span="enrich"))
    app.wsgi_app = WSGIMiddleware(  # type: ignore[method-assign]
        DistillGuardWSGIMiddleware(app.wsgi_app, guard=guard), tracer_provider=tracer_provider
    )
    assert _flask_post(app, {}) == 200
    spans = span_exporter.get_finished_spans()
    assert [s for s in spans if s.name == SPAN_NAME] == []
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1
    assert servers[0].attributes is not None and servers[0].attributes[ATTR_DECISION] == "allow"


@pytest.mark.parametrize("span", ["child", "enrich"])
async def test_the_app_shares_the_context_of_the_middleware_around_the_guard(
    guard_factory: Callable[..., Guard], tracer_provider: Any, span_exporter: InMemorySpanExporter, span: str
) -> None:
    """Pure ASGI keeps one context (starlette #1525): a context variable set outside the guard
    reaches the app, one the app sets is seen outside it after the call, and the app's
    attribute lands on the span current in the app: the guard's (a child of the server span,
    same trace) or, with ``span="enrich"``, the server span the guard enriched."""
    import contextvars

    from opentelemetry import trace

    from distillguard import TelemetryConfig

    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="")
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen["outer"] = tag.get()
        current = trace.get_current_span()
        seen["current"] = current.get_span_context()
        current.set_attribute("app.attribute", "set-by-the-app")
        tag.set("set-by-the-app")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    guarded = DistillGuardMiddleware(app, guard=guard_factory(telemetry=TelemetryConfig(span=span)))
    instrumented = OpenTelemetryMiddleware(
        guarded, tracer_provider=tracer_provider, exclude_spans=["receive", "send"]
    )

    async def outermost(scope: Any, receive: Any, send: Any) -> None:
        tag.set("set-outside")
        await instrumented(scope, receive, send)
        seen["after"] = tag.get()

    assert (await post(outermost)).status_code == 200
    assert seen["outer"] == "set-outside" and seen["after"] == "set-by-the-app"
    spans = span_exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    carrier = [s for s in spans if s.context.span_id == seen["current"].span_id]
    assert len(carrier) == 1 and carrier[0].context.trace_id == server.context.trace_id
    assert (carrier[0].attributes or {}).get("app.attribute") == "set-by-the-app"
    assert (carrier[0].attributes or {}).get(ATTR_DECISION) == "allow"
    if span == "child":
        assert carrier[0].name == SPAN_NAME and carrier[0].parent is not None
        assert carrier[0].parent.span_id == server.context.span_id
    else:
        assert carrier[0] is server or carrier[0].context.span_id == server.context.span_id

"""What the guard's span records: stable HTTP semantic-convention names, GenAI request and usage
attributes (JSON and SSE responses, ASGI and WSGI), the route when the framework knows it, and
the caps on attribute length and count."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import DistillGuardMiddleware, Guard, LimitConfig, TelemetryConfig
from distillguard.flask import DistillGuard
from distillguard.limiting.rules import LimitRule
from distillguard.telemetry import ATTR_DECISION, ATTR_DETECTOR_SCORE, SPAN_NAME
from distillguard.telemetry.flask import enrich_flask_spans
from tests.helpers import StaticDetector, make_token
from tests.telemetry.apps import CHAT_PATH, INPUT_TOKENS, OUTPUT_TOKENS, chat_body, flask_app, starlette_app

pytestmark = pytest.mark.anyio


def the_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one finished guard span."""
    spans = [s for s in exporter.get_finished_spans() if s.name == SPAN_NAME]
    assert len(spans) == 1
    return spans[0]


def attrs(exporter: InMemorySpanExporter) -> dict[str, Any]:
    """The attributes of the one guard span."""
    return dict(the_span(exporter).attributes or {})


async def asgi_post(
    app: Any, body: bytes, *, token: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``body`` to the chat route through ``app`` (real ASGI, in process)."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        sent = {"content-type": "application/json", "user-agent": "probe/1.0"}
        sent["authorization"] = f"Bearer {token or make_token()}"
        sent.update(headers or {})
        return await client.post(CHAT_PATH, content=body, headers=sent)


def wsgi_post(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """POST through a Flask app's test client; close the response (which ends the span)."""
    response = app.test_client().post(
        path,
        data=body,
        headers={"authorization": f"Bearer {make_token()}", "content-type": "application/json"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    data = response.get_data()
    response.close()
    return int(response.status_code), data


@pytest.mark.parametrize("stream", [False, True])
async def test_asgi_span_has_semconv_and_genai_attributes(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter, stream: bool
) -> None:
    """Starlette: stable HTTP names, the route, GenAI request attributes and usage (JSON or SSE)."""
    app = DistillGuardMiddleware(starlette_app(), guard=guard_factory())
    response = await asgi_post(app, chat_body(model="gpt-test", max_tokens=64, stream=stream))
    assert response.status_code == 200
    a = attrs(span_exporter)
    assert a["http.request.method"] == "POST"
    assert a["url.path"] == CHAT_PATH
    assert a["http.route"] == CHAT_PATH
    assert a["http.response.status_code"] == 200
    assert a["client.address"] == "203.0.113.7"
    assert "user_agent.original" not in a  # off unless configured
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-test"
    assert a["gen_ai.request.max_tokens"] == 64
    assert a["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert a["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert a[ATTR_DECISION] == "allow"
    assert "distillguard.query.kind" not in a  # gen_ai.operation.name says it
    assert "distillguard.query.length" not in a and "distillguard.score" not in a  # allowed, no detectors
    for old in ("http.method", "http.status_code", "http.target", "net.peer.ip", "http.url"):
        assert old not in a


@pytest.mark.parametrize("stream", [False, True])
def test_wsgi_span_has_semconv_and_genai_attributes(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter, stream: bool
) -> None:
    """The same through Flask (WSGI), with the Flask hook giving ``http.route``."""
    app = flask_app()
    DistillGuard(guard_factory(), app)
    enrich_flask_spans(app)
    status, _ = wsgi_post(app, CHAT_PATH, chat_body(max_tokens=32, stream=stream))
    assert status == 200
    a = attrs(span_exporter)
    assert a["http.request.method"] == "POST"
    assert a["url.path"] == CHAT_PATH
    assert a["http.route"] == CHAT_PATH
    assert a["http.response.status_code"] == 200
    assert a["client.address"] == "203.0.113.7"
    assert a["gen_ai.request.max_tokens"] == 32
    assert a["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert a["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS


async def test_usage_is_read_once_when_token_limits_already_parse_it(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """With a token limit the budget's own usage reading feeds the span (same values)."""
    limits = LimitConfig(
        default="1000/minute", rules=[LimitRule(name="tok", limits="100000/minute", unit="tokens")]
    )
    app = DistillGuardMiddleware(starlette_app(), guard=guard_factory(limits=limits))
    assert (await asgi_post(app, chat_body(stream=True))).status_code == 200
    a = attrs(span_exporter)
    assert a["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert a["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS


async def test_stream_without_usage_counts_deltas(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """A stream without ``usage`` gets output tokens counted from deltas, marked as such."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for piece in ("a", "b", "c"):
            event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {json.dumps(event)}\n\n".encode(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    guarded = DistillGuardMiddleware(app, guard=guard_factory())
    assert (await asgi_post(guarded, chat_body(stream=True))).status_code == 200
    a = attrs(span_exporter)
    assert a["gen_ai.usage.output_tokens"] == 3
    assert a["distillguard.usage.source"] == "deltas"
    assert "gen_ai.usage.input_tokens" not in a
    assert "http.route" not in a  # a bare ASGI app has no router: the route is unknown


async def test_usage_can_be_turned_off(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """``record_usage=False`` leaves the response unread: no ``gen_ai.usage.*``."""
    guard = guard_factory(telemetry=TelemetryConfig(record_usage=False))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    assert (await asgi_post(app, chat_body())).status_code == 200
    a = attrs(span_exporter)
    assert "gen_ai.usage.input_tokens" not in a and "gen_ai.usage.output_tokens" not in a
    assert a["gen_ai.request.model"] == "gpt-test"


def test_predict_request_has_no_genai_operation(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """A classic predict body is not a GenAI operation: no ``gen_ai.*`` attributes."""
    app = flask_app()
    DistillGuard(guard_factory()).init_app(app, enrich_spans=False)
    status, _ = wsgi_post(app, "/v1/predict/m1", json.dumps({"inputs": [1.0, 2.0]}).encode())
    assert status == 200
    a = attrs(span_exporter)
    assert a["distillguard.query.kind"] == "vector"
    assert not [k for k in a if k.startswith("gen_ai.")]
    assert "http.route" not in a  # WSGI without the Flask hook cannot see the route


async def test_refused_request_records_status_and_no_usage(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """A refusal (401) records its status and decision, and no usage is read."""
    app = DistillGuardMiddleware(starlette_app(), guard=guard_factory())
    response = await asgi_post(app, chat_body(), token="not-a-jwt")
    assert response.status_code == 401
    a = attrs(span_exporter)
    assert a["http.response.status_code"] == 401
    assert a[ATTR_DECISION] == "unauthenticated"
    assert "gen_ai.usage.output_tokens" not in a
    assert "http.route" not in a  # the app never routed it


async def test_user_agent_only_when_configured_and_capped(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """``record_user_agent=True`` records ``user_agent.original``, cut to the length cap."""
    guard = guard_factory(telemetry=TelemetryConfig(record_user_agent=True, max_attribute_length=16))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    ua = "crawler/" + "x" * 100
    assert (await asgi_post(app, chat_body(), headers={"user-agent": ua})).status_code == 200
    assert attrs(span_exporter)["user_agent.original"] == ua[:16]


async def test_long_values_are_capped(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Strings longer than ``max_attribute_length`` (model, path) are cut to it."""
    guard = guard_factory(telemetry=TelemetryConfig(max_attribute_length=20))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    assert (await asgi_post(app, chat_body(model="m" * 500))).status_code == 200
    a = attrs(span_exporter)
    assert a["gen_ai.request.model"] == "m" * 20
    assert len(a["url.path"]) <= 20
    assert all(len(v) <= 20 for v in a.values() if isinstance(v, str))


async def test_attribute_count_is_capped_least_important_first(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Past max_span_attributes per-detector scores go first; decision and status stay."""
    detectors = [StaticDetector(0.1, name=f"d{i}") for i in range(40)]
    guard = guard_factory(detectors=detectors, telemetry=TelemetryConfig(max_span_attributes=12))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    assert (await asgi_post(app, chat_body())).status_code == 200
    a = attrs(span_exporter)
    assert len(a) <= 12
    assert a[ATTR_DECISION] == "allow"
    assert a["http.response.status_code"] == 200
    assert ATTR_DETECTOR_SCORE.format("d38") not in a

    span_exporter.clear()  # the detector that drove the decision is kept, wherever it is listed
    culprit = [*detectors[:39], StaticDetector(0.95, name="culprit")]
    guard = guard_factory(detectors=culprit, telemetry=TelemetryConfig(max_span_attributes=20))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    assert (await asgi_post(app, chat_body())).status_code == 429
    a = attrs(span_exporter)
    kept = [k for k in a if k.startswith("distillguard.detector.")]
    assert len(a) <= 20 and 0 < len(kept) < 40
    assert a[ATTR_DETECTOR_SCORE.format("culprit")] == pytest.approx(0.95)

    span_exporter.clear()
    roomy = guard_factory(detectors=detectors[:3], telemetry=TelemetryConfig(max_span_attributes=64))
    app = DistillGuardMiddleware(starlette_app(), guard=roomy)
    assert (await asgi_post(app, chat_body())).status_code == 200
    assert attrs(span_exporter)[ATTR_DETECTOR_SCORE.format("d2")] == pytest.approx(0.1)


async def test_traceparent_continues_the_callers_trace_without_becoming_current(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """With no current span ours continues traceparent and the app runs with no current span."""
    from opentelemetry import trace

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = DistillGuardMiddleware(app, guard=guard_factory())
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert (await asgi_post(guarded, b"{}", headers={"traceparent": traceparent})).status_code == 204
    span = the_span(span_exporter)
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331 and span.parent.is_remote
    assert seen == [trace.INVALID_SPAN]


async def test_uninformative_attributes_are_left_out(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Zero detector scores and an unbound limit policy are left out; the binding window is named."""
    guard = guard_factory(
        limits=LimitConfig(default="2/minute"),
        detectors=[StaticDetector(0.0, name="quiet"), StaticDetector(0.3, name="loud")],
    )
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    statuses = [(await asgi_post(app, chat_body())).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    first, _, refused = sorted(
        (s for s in span_exporter.get_finished_spans() if s.name == SPAN_NAME),
        key=lambda s: s.start_time or 0,
    )
    a = dict(first.attributes or {})
    assert ATTR_DETECTOR_SCORE.format("quiet") not in a
    assert a[ATTR_DETECTOR_SCORE.format("loud")] == pytest.approx(0.3)
    assert a["distillguard.limit.remaining"] == 1
    assert "distillguard.limit.policy" not in a
    r = dict(refused.attributes or {})
    assert r[ATTR_DECISION] == "rate_limited"
    assert r["distillguard.limit.remaining"] == 0
    assert r["distillguard.limit.policy"] == "2-per-1-minute"
    assert r["distillguard.query.length"] == len("hello")  # a refused request's prompt length
    assert "distillguard.query.length" not in a


def test_guard_5xx_sets_error_status_and_4xx_does_not(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """A 503 the guard answers sets ERROR and error.type 503; a 401 leaves the status unset."""
    import socket

    from opentelemetry.trace import StatusCode

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    limits = LimitConfig(
        default="100/minute",
        storage_uri=f"redis://127.0.0.1:{dead}",
        storage_options={"socket_connect_timeout": 0.2},
        outage="fail_closed",
    )
    app = flask_app()
    DistillGuard(guard_factory(limits=limits), app)
    status, _ = wsgi_post(app, CHAT_PATH, chat_body())
    assert status == 503
    span = the_span(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "503"

    span_exporter.clear()
    app = flask_app()
    DistillGuard(guard_factory(), app)
    response = app.test_client().post(CHAT_PATH, data=chat_body(), headers={"authorization": "Bearer nope"})
    response.close()
    assert response.status_code == 401
    span = the_span(span_exporter)
    assert span.status.status_code is StatusCode.UNSET
    assert "error.type" not in dict(span.attributes or {})


async def test_no_tracing_sdk_skips_span_work_but_still_counts(
    guard_factory: Callable[..., Guard], meter_provider: Any, metric_reader: Any
) -> None:
    """With a no-op tracer provider no span is built (none current in the app); metrics still count."""
    from opentelemetry import trace
    from opentelemetry.trace import NoOpTracerProvider

    from tests.telemetry.conftest import metric_points, value_of

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(trace.get_current_span())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = guard_factory(tracer_provider=NoOpTracerProvider(), meter_provider=meter_provider)
    assert guard.telemetry.begin(guard_request())[0] is trace.INVALID_SPAN
    guarded = DistillGuardMiddleware(app, guard=guard)
    assert (await asgi_post(guarded, chat_body())).status_code == 200
    assert seen == [trace.INVALID_SPAN]
    decisions = metric_points(metric_reader)["distillguard.decisions"]
    assert value_of(decisions, distillguard__decision="allow") == 1


def guard_request() -> Any:
    """A minimal request for calling the telemetry directly."""
    from distillguard.request import GuardRequest

    return GuardRequest(
        method="POST",
        path=CHAT_PATH,
        authorization=None,
        content_type="application/json",
        body=b"{}",
        client_address="203.0.113.7",
        user_agent=None,
        timestamp=0.0,
    )


async def test_refused_span_names_the_window_that_refused(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """A refused request's charges are taken back before the span reads the windows: a window
    this request would have filled is not named as the binding one."""
    guard = guard_factory(limits=LimitConfig(default="3/minute;2/10second"))
    app = DistillGuardMiddleware(starlette_app(), guard=guard)
    statuses = [(await asgi_post(app, chat_body())).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = max(
        (s for s in span_exporter.get_finished_spans() if s.name == SPAN_NAME),
        key=lambda s: s.start_time or 0,
    )
    r = dict(refused.attributes or {})
    assert r[ATTR_DECISION] == "rate_limited"
    assert r["distillguard.limit.remaining"] == 0
    assert r["distillguard.limit.policy"] == "2-per-10-second"

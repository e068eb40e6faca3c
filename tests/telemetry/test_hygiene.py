"""Attribute hygiene: requests whose prompt, bearer token, token claims, response text, query
string, headers and app exception carry unique marker strings leave none of them in any span
(name, attribute, event, link, status), metric attribute or log record. Also: client ids are
hashed by default (with an optional key) and the configuration is checked."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import ConfigurationError, DistillGuardMiddleware, Guard, LimitConfig, TelemetryConfig
from distillguard.flask import DistillGuard
from distillguard.telemetry import ATTR_CLIENT_ID, hash_identifier
from distillguard.telemetry.flask import enrich_flask_spans
from tests.helpers import HS256_SECRET, RaisingDetector, StaticDetector, make_token
from tests.telemetry.apps import CHAT_PATH, chat_body, fastapi_app, flask_app

pytestmark = pytest.mark.anyio

PROMPT = "PROMPT-MARKER-5d1f0c"
CLAIM = "CLAIM-SECRET-MARKER-92aa1e"
OUTPUT = "OUTPUT-MARKER-0b77e2"
QUERY = "QUERY-MARKER-3c9d41"
COOKIE = "COOKIE-MARKER-e8f610"
AGENT = "AGENT-MARKER-71c0a3"
BAD_TOKEN = "BADTOKEN-MARKER-4e2b9f"
SUBJECT = "SUBJECT-MARKER-a4410d"
APP_ERROR = "APP-ERROR-MARKER-6f3b20"


def markers(token: str) -> list[str]:
    """Every string that must never leave the process (the real token and its signature too)."""
    return [
        PROMPT,
        CLAIM,
        OUTPUT,
        QUERY,
        COOKIE,
        AGENT,
        BAD_TOKEN,
        SUBJECT,
        APP_ERROR,
        token,
        token.rsplit(".", 1)[1],
        HS256_SECRET.decode(),
    ]


def add_boom_route(app: Any, framework: str) -> None:
    """A route whose handler raises an exception quoting the (marked) request."""
    if framework == "flask":

        @app.post("/boom")
        def boom() -> Any:
            raise RuntimeError(f"could not answer {PROMPT} {APP_ERROR}")

    else:

        @app.post("/boom")
        async def boom_async() -> Any:
            raise RuntimeError(f"could not answer {PROMPT} {APP_ERROR}")


def scenario_headers(token: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "content-type": "application/json",
        "cookie": f"session={COOKIE}",
        "user-agent": AGENT,
    }


def flatten(value: Any) -> Iterator[str]:
    """Every string inside an attribute value (sequences included)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from flatten(item)
    else:
        yield str(value)


def exported_strings(exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> list[str]:
    """Every string the telemetry holds: span names, attribute keys and values, events, links,
    statuses and every metric attribute."""
    out: list[str] = []
    for span in exporter.get_finished_spans():
        out.append(span.name)
        out.append(span.status.description or "")
        for key, value in (span.attributes or {}).items():
            out.append(key)
            out.extend(flatten(value))
        for event in span.events:
            out.append(event.name)
            for key, value in (event.attributes or {}).items():
                out.append(key)
                out.extend(flatten(value))
        for link in span.links:
            for key, value in (link.attributes or {}).items():
                out.append(key)
                out.extend(flatten(value))
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.append(metric.name)
                for point in metric.data.data_points:
                    for key, value in (point.attributes or {}).items():
                        out.append(key)
                        out.extend(flatten(value))
    return out


def log_strings(records: list[logging.LogRecord]) -> list[str]:
    """Every rendered message of distillguard's and OpenTelemetry's loggers, with arguments and
    exception text (the app's own loggers, e.g. Flask logging its exception, are the app's)."""
    formatter = logging.Formatter()
    out = []
    for record in records:
        if not record.name.startswith(("distillguard", "opentelemetry")):
            continue
        out.append(record.getMessage())
        out.append(repr(record.args))
        if record.exc_info:
            out.append(formatter.formatException(record.exc_info))
    return out


def assert_clean(strings: list[str], forbidden: list[str]) -> None:
    for text in strings:
        for marker in forbidden:
            assert marker not in text, f"{marker!r} leaked into {text[:200]!r}"


@pytest.fixture
def capture_all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record of every logger, from DEBUG up (filtered in :func:`log_strings`)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def _guard(guard_factory: Callable[..., Guard], meter_provider: MeterProvider) -> Guard:
    return guard_factory(
        meter_provider=meter_provider,
        limits=LimitConfig(default="5/minute"),
        detectors=[StaticDetector(0.6, name="flagger"), RaisingDetector(name="broken")],
    )


async def test_asgi_exports_no_prompt_token_or_secret(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
    capture_all_logs: pytest.LogCaptureFixture,
) -> None:
    """FastAPI: marked prompts, tokens and secrets never reach spans, metrics or logs."""
    token = make_token(sub=SUBJECT, api_secret=CLAIM)
    app = fastapi_app(answer=OUTPUT)
    add_boom_route(app, "fastapi")
    app.add_middleware(DistillGuardMiddleware, guard=_guard(guard_factory, meter_provider))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        headers = scenario_headers(token)
        url = f"{CHAT_PATH}?api_key={QUERY}"
        statuses = [
            (await client.post(url, content=chat_body(PROMPT), headers=headers)).status_code,
            (await client.post(url, content=chat_body(PROMPT, stream=True), headers=headers)).status_code,
            (await client.post("/boom", content=chat_body(PROMPT), headers=headers)).status_code,
            (
                await client.post(
                    url,
                    content=chat_body(PROMPT),
                    headers={**headers, "authorization": f"Bearer {BAD_TOKEN}"},
                )
            ).status_code,
        ]
        for _ in range(4):
            statuses.append((await client.post(url, content=chat_body(PROMPT), headers=headers)).status_code)
    assert statuses[:4] == [200, 200, 500, 401]
    assert 429 in statuses[4:]
    strings = exported_strings(span_exporter, metric_reader)
    assert any("distillguard" in s for s in strings)  # something was exported
    assert_clean(strings, markers(token))
    assert any(r.name.startswith("distillguard") for r in capture_all_logs.records)
    assert_clean(log_strings(capture_all_logs.records), markers(token))


def test_wsgi_exports_no_prompt_token_or_secret(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
    capture_all_logs: pytest.LogCaptureFixture,
) -> None:
    """Flask with the span hook: the same requests leave no marker in spans, metrics or logs."""
    token = make_token(sub=SUBJECT, api_secret=CLAIM)
    app = flask_app(answer=OUTPUT)
    add_boom_route(app, "flask")
    DistillGuard(_guard(guard_factory, meter_provider), app)
    enrich_flask_spans(app)
    client = app.test_client()
    headers = scenario_headers(token)
    url = f"{CHAT_PATH}?api_key={QUERY}"
    statuses = []
    for path, body, sent in [
        (url, chat_body(PROMPT), headers),
        (url, chat_body(PROMPT, stream=True), headers),
        ("/boom", chat_body(PROMPT), headers),
        (url, chat_body(PROMPT), {**headers, "authorization": f"Bearer {BAD_TOKEN}"}),
        *[(url, chat_body(PROMPT), headers)] * 4,
    ]:
        response = client.post(path, data=body, headers=sent)
        response.get_data()
        response.close()
        statuses.append(response.status_code)
    assert statuses[:4] == [200, 200, 500, 401]
    assert 429 in statuses[4:]
    strings = exported_strings(span_exporter, metric_reader)
    assert any("distillguard" in s for s in strings)
    assert_clean(strings, markers(token))
    assert any(r.name.startswith("distillguard") for r in capture_all_logs.records)
    assert_clean(log_strings(capture_all_logs.records), markers(token))


def test_client_ids_are_hashed_by_default_and_keyed_on_request(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """Client ids are hashed by default, keyed with hash_key, raw only when configured; the same
    value goes to ``enduser.pseudo.id`` (hashed) or ``enduser.id`` (raw)."""
    key = b"k" * 32
    for config, expected in [
        (TelemetryConfig(), hash_identifier(SUBJECT)),
        (TelemetryConfig(hash_key=key), hash_identifier(SUBJECT, key)),
        (TelemetryConfig(hash_identifiers=False), SUBJECT),
    ]:
        span_exporter.clear()
        app = flask_app()
        DistillGuard(guard_factory(telemetry=config), app)
        response = app.test_client().post(
            CHAT_PATH, data=chat_body(), headers={"authorization": f"Bearer {make_token(sub=SUBJECT)}"}
        )
        response.close()
        (span,) = span_exporter.get_finished_spans()
        assert span.attributes is not None and span.attributes[ATTR_CLIENT_ID] == expected
        # the semantic conventions' end-user id: a pseudonym when hashed, the id itself when raw
        hashed = config.hash_identifiers
        assert span.attributes["enduser.pseudo.id" if hashed else "enduser.id"] == expected
        assert ("enduser.id" if hashed else "enduser.pseudo.id") not in span.attributes
    assert hash_identifier(SUBJECT) != hash_identifier(SUBJECT, key)
    assert len(hash_identifier(SUBJECT)) == 16


@pytest.mark.parametrize(
    "options",
    [{"max_attribute_length": 8}, {"max_span_attributes": 4}, {"hash_key": b"x" * 65}],
)
def test_bad_configuration_fails_fast(options: dict[str, Any]) -> None:
    """Too-small caps and an over-long hash key raise ``ConfigurationError`` at construction."""
    with pytest.raises(ConfigurationError):
        TelemetryConfig(**options)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("claim", ["sub", "tier", "iss"])
def test_claims_with_lone_surrogates_are_refused_and_the_span_exports(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter, kind: str, claim: str
) -> None:
    """A token whose ``sub``, ``tier`` or tenant claim holds a lone surrogate (a valid JSON
    escape, but no text: Redis and the exporters refuse it) gets the generic 401, and its span
    encodes for OTLP (an exporter that met invalid UTF-8 would drop the whole batch)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tests.helpers import ISSUER, jwt_config
    from tests.limiting.apps import Harness, chat_body as limit_body

    issuer = "https://idp\udfff.example" if claim == "iss" else ISSUER
    guard = guard_factory(jwt=jwt_config(issuer=[ISSUER, issuer]))
    h = Harness(kind, guard)
    try:
        value = {"sub": "bad\ud800id", "tier": "t\udfffx", "iss": issuer}[claim]
        status, _, body = h.call(limit_body(), token=make_token(**{claim: value}))
    finally:
        h.close()
    assert status == 401 and b"invalid_token" in body
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "distillguard.guard"]
    assert encode_spans([span]).SerializeToString()


def test_attributes_and_hashes_take_any_string() -> None:
    """Defence in depth: the hash of an id holding a lone surrogate is that of its exact code
    points, and an attribute holding one is made valid UTF-8 (``?``)."""
    from distillguard.telemetry.attributes import AttributeBuilder

    assert hash_identifier("bad\ud800id") != hash_identifier("bad?id")
    plain = AttributeBuilder(TelemetryConfig(hash_identifiers=False))
    assert plain.client("bad\ud800id") == "bad?id" and plain.cap("caf\u00e9") == "caf\u00e9"
    hashed = AttributeBuilder(TelemetryConfig())
    assert hashed.client("bad\ud800id") == hash_identifier("bad\ud800id")


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_model_name_with_a_lone_surrogate_keeps_the_span_exportable(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter, kind: str
) -> None:
    """Any client can send ``"model": "m\\ud800"`` (valid JSON): the request is served, and the
    span records the model with ``?`` and still encodes for OTLP (before, its attribute made the
    exporter drop the whole batch the span was in)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from tests.limiting.apps import Harness

    h = Harness(kind, guard_factory())
    try:
        body = b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
        assert h.call(body)[0] == 200
    finally:
        h.close()
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "distillguard.guard"]
    assert (span.attributes or {})["gen_ai.request.model"] == "m?"
    assert encode_spans([span]).SerializeToString()

"""End to end: a guarded FastAPI app in a subprocess, its OpenTelemetry SDK configured only by
the standard ``OTEL_*`` environment variables, exports spans and metrics over OTLP/HTTP
(protobuf) to a real receiver started here (``OtlpProtoTestServer`` from
opentelemetry-test-utils), and they are read back from the wire format."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.test._otlp_test_server import OtlpProtoTestServer

from tests.helpers import make_token
from tests.servers import free_port, wait_until_serving
from tests.telemetry.apps import CHAT_PATH, INPUT_TOKENS, OUTPUT_TOKENS, chat_body

ROOT = Path(__file__).resolve().parents[2]
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
INTERNAL_KIND = 1


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


@pytest.mark.slow
def test_spans_and_metrics_reach_an_otlp_http_receiver() -> None:
    """Spans and metrics configured only by OTEL_* reach a real OTLP/HTTP receiver intact."""
    with OtlpProtoTestServer() as receiver:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FASTAPI_OTEL"))}
        env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_SERVICE_NAME": "distillguard-e2e",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_METRIC_EXPORT_INTERVAL": "300",
                "PYTHONPATH": str(ROOT),
            }
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.telemetry.otlp_app", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until_serving(port, process, timeout=20)
            base = f"http://127.0.0.1:{port}"
            headers = {"authorization": f"Bearer {make_token()}", "content-type": "application/json"}
            with httpx.Client(base_url=base, timeout=10) as client:
                assert (
                    client.post(CHAT_PATH, content=chat_body(max_tokens=21), headers=headers).status_code
                    == 200
                )
                streamed = client.post(CHAT_PATH, content=chat_body(stream=True), headers=headers)
                assert streamed.status_code == 200 and b"[DONE]" in streamed.content
                bad = {**headers, "authorization": "Bearer nope"}
                assert client.post(CHAT_PATH, content=chat_body(), headers=bad).status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                _, stderr = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
        # uvicorn shuts down gracefully (lifespan: the providers flush), then re-raises SIGTERM
        assert process.returncode in (0, -signal.SIGTERM), stderr.decode()
        spans = receiver.drain_spans()
        recorded_metrics = receiver.drain_metrics()

    guards = [r for r in spans if r.span.name == "distillguard.guard"]
    assert len(guards) == 3
    servers = {
        r.span.span_id: r
        for r in spans
        if r.span.kind == SERVER_KIND and _attrs(r.span.attributes)["http.request.method"] == "POST"
    }
    assert len(servers) == 3  # FastAPI's native span, once per request (readiness GETs aside)
    assert {r.scope.name for r in servers.values()} == {"fastapi"}  # on by itself: a global SDK
    resource = _attrs(guards[0].resource.attributes)
    assert resource["service.name"] == "distillguard-e2e"
    assert resource["deployment.environment.name"] == "test"
    assert len(resource["service.instance.id"]) == 36  # added: OTEL_RESOURCE_ATTRIBUTES has none
    assert guards[0].scope.name == "distillguard"
    by_decision: dict[str, list[dict[str, Any]]] = {}
    for recorded in guards:
        span = recorded.span
        assert span.kind == INTERNAL_KIND
        assert span.parent_span_id in servers  # child of the server span, same trace
        assert servers[span.parent_span_id].span.trace_id == span.trace_id
        attributes = _attrs(span.attributes)
        by_decision.setdefault(attributes["distillguard.decision"], []).append(attributes)
    flagged = by_decision["flag"]
    assert len(flagged) == 2 and len(by_decision["unauthenticated"]) == 1
    for attributes in flagged:
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.route"] == CHAT_PATH
        assert attributes["http.response.status_code"] == 200
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
        assert attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
        assert attributes["distillguard.score"] == pytest.approx(0.6)
    assert sorted(a["gen_ai.request.max_tokens"] for a in flagged) == [21, 64]
    assert by_decision["unauthenticated"][0]["http.response.status_code"] == 401

    latest: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    for recorded in recorded_metrics:
        if recorded.scope.name != "distillguard":
            continue
        metric = recorded.metric
        data = getattr(metric, metric.WhichOneof("data"))
        for point in data.data_points:
            latest[(metric.name, tuple(sorted(_attrs(point.attributes).items())))] = point
    assert _attrs(recorded_metrics[0].resource.attributes)["service.name"] == "distillguard-e2e"
    decisions = {k[1]: p.as_int for k, p in latest.items() if k[0] == "distillguard.decisions"}
    assert decisions == {
        (("distillguard.decision", "flag"),): 2,
        (("distillguard.decision", "unauthenticated"),): 1,
    }
    verdicts = {k[1]: p.as_int for k, p in latest.items() if k[0] == "distillguard.detector.verdicts"}
    assert verdicts == {
        (("distillguard.detector.name", "flagger"), ("distillguard.detector.verdict", "flag")): 2
    }
    durations = {k[1]: p for k, p in latest.items() if k[0] == "distillguard.guard.duration"}
    assert durations[(("distillguard.decision", "flag"),)].count == 2
    assert durations[(("distillguard.decision", "unauthenticated"),)].count == 1
    (score,) = [p for k, p in latest.items() if k[0] == "distillguard.risk.score"]
    assert score.count == 2 and score.sum == pytest.approx(1.2)
    (clients,) = [p for k, p in latest.items() if k[0] == "distillguard.clients.tracked"]
    assert clients.as_int == 0

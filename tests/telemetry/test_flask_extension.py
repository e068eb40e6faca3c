"""The Flask extension records the matched route on the guard's span."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import Guard
from distillguard.flask import DistillGuard
from distillguard.telemetry import SPAN_NAME
from distillguard.telemetry.names import HTTP_ROUTE


def _app(guard: Guard, **options: Any) -> Flask:
    app = Flask(__name__)

    @app.post("/v1/models/<name>/predict")
    def predict(name: str) -> dict[str, str]:
        return {"model": name}

    DistillGuard(guard).init_app(app, **options)
    return app


def _guard_span(exporter: InMemorySpanExporter) -> Any:
    spans = [s for s in exporter.get_finished_spans() if s.name == SPAN_NAME]
    assert len(spans) == 1
    return spans[0]


def test_route_template_on_guard_span(
    guard_factory: Callable[..., Guard], make_token: Callable[..., str], span_exporter: InMemorySpanExporter
) -> None:
    """The guard's span carries Flask's rule (low cardinality), not the raw path."""
    app = _app(guard_factory())
    response = app.test_client().post(
        "/v1/models/m-42/predict",
        json={"inputs": [1, 2]},
        headers={"authorization": f"Bearer {make_token()}"},
    )
    assert response.status_code == 200
    response.close()  # the guard's span ends when the server closes the response
    assert _guard_span(span_exporter).attributes[HTTP_ROUTE] == "/v1/models/<name>/predict"


def test_route_hook_can_be_left_out(
    guard_factory: Callable[..., Guard], make_token: Callable[..., str], span_exporter: InMemorySpanExporter
) -> None:
    """With enrich_spans=False no route is recorded (the hook is not registered)."""
    app = _app(guard_factory(), enrich_spans=False)
    response = app.test_client().post(
        "/v1/models/m-42/predict",
        json={"inputs": [1, 2]},
        headers={"authorization": f"Bearer {make_token()}"},
    )
    assert response.status_code == 200
    response.close()
    assert HTTP_ROUTE not in (_guard_span(span_exporter).attributes or {})
    assert app.before_request_funcs.get(None, []) == []


def test_span_hook_registers_once(guard_factory: Callable[..., Guard]) -> None:
    """Calling enrich_flask_spans after init_app does not register the hook a second time."""
    from distillguard.telemetry.flask import enrich_flask_spans

    app = _app(guard_factory())
    enrich_flask_spans(app)
    assert len(app.before_request_funcs[None]) == 1

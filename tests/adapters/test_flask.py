"""Flask integration: the ``DistillGuard`` extension, views reading the body and the decision,
streaming views, and refusals through Flask's test client."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request, stream_with_context

from distillguard import Guard, LimitConfig
from distillguard.flask import DistillGuard, current_decision
from distillguard.telemetry import ATTR_DECISION
from tests.helpers import StaticDetector, guard_spans, make_token

pytestmark = pytest.mark.timeout(30)


def build_app(guard: Guard) -> tuple[Flask, dict[str, Any]]:
    """A small chat-like Flask app guarded by ``guard``; ``seen`` records what the views saw."""
    app = Flask(__name__)
    seen: dict[str, Any] = {"closed": 0}

    @app.post("/v1/chat/completions")
    def chat() -> Any:
        seen["json"] = request.get_json()
        seen["raw"] = request.get_data()
        seen["content_length"] = request.content_length
        seen["decision"] = current_decision()
        return jsonify({"id": "chatcmpl-1", "choices": []})

    @app.get("/stream")
    def stream() -> Response:
        def events() -> Iterator[str]:
            try:
                yield "data: a\n\n"
                yield "data: b\n\n"
            finally:
                seen["closed"] += 1

        return Response(stream_with_context(events()), mimetype="text/event-stream")

    @app.get("/health")
    def health() -> Any:
        seen["health_decision"] = current_decision()
        return {"ok": True}

    DistillGuard(guard).init_app(app)
    return app, seen


@pytest.fixture
def flask_app(guard_factory: Callable[..., Guard]) -> Callable[..., tuple[Flask, dict[str, Any]]]:
    """``flask_app(**guard_options)``: the guarded Flask app and what its views saw."""
    return lambda **options: build_app(guard_factory(**options))


def test_view_reads_body_and_decision(flask_app: Callable[..., Any]) -> None:
    """The view's ``get_json()`` sees the client's exact bytes and ``current_decision()`` the
    verified identity."""
    app, seen = flask_app()
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    response = app.test_client().post(
        "/v1/chat/completions",
        data=body,
        headers={
            "authorization": f"Bearer {make_token(sub='flask-user')}",
            "content-type": "application/json",
        },
    )
    assert response.status_code == 200
    assert seen["raw"] == body and seen["json"]["model"] == "m"
    assert seen["content_length"] == len(body)
    assert seen["decision"].identity.client_id == "flask-user"
    assert "RateLimit" in response.headers


def test_refusal_is_problem_json(flask_app: Callable[..., Any]) -> None:
    """Without a token Flask never runs the view; the client gets the 401 problem."""
    app, seen = flask_app()
    response = app.test_client().post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "missing_token"
    assert "json" not in seen


def test_rate_limit_through_flask(flask_app: Callable[..., Any]) -> None:
    """The third request at 2/minute is a 429 with Retry-After."""
    app, _ = flask_app(limits=LimitConfig(default="2/minute"))
    client = app.test_client()
    auth = {"authorization": f"Bearer {make_token()}"}
    codes = [client.post("/v1/chat/completions", json={}, headers=auth).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    refused = client.post("/v1/chat/completions", json={}, headers=auth)
    assert int(refused.headers["Retry-After"]) >= 1


def test_streaming_view_closes_and_ends_span(flask_app: Callable[..., Any], span_exporter: Any) -> None:
    """A streamed Flask response passes through unchanged; closing it runs the generator's
    ``finally`` and ends the guard span."""
    app, seen = flask_app(detectors=[StaticDetector(0.6)])
    response = app.test_client().get("/stream", headers={"authorization": f"Bearer {make_token()}"})
    assert response.status_code == 200
    assert response.get_data() == b"data: a\n\ndata: b\n\n"
    response.close()
    assert seen["closed"] == 1
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "flag"


def test_exempt_health_check(flask_app: Callable[..., Any]) -> None:
    """``/health`` is served without a token and without a decision."""
    app, seen = flask_app()
    assert app.test_client().get("/health").status_code == 200
    assert seen["health_decision"] is None


def test_init_app_twice_is_an_error(guard_factory: Callable[..., Guard]) -> None:
    """Guarding the same Flask app twice is refused (it would check every request twice)."""
    app = Flask(__name__)
    ext = DistillGuard(guard_factory(), app)
    assert app.extensions["distillguard"] is ext
    with pytest.raises(RuntimeError):
        DistillGuard(guard_factory()).init_app(app)

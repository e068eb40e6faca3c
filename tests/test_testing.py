"""``distillguard.testing``: the helpers users test their guarded apps with, used as a user would
(a FastAPI app and a Flask app, real tokens, real spans)."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from flask import Flask

from distillguard import ConfigurationError, DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard
from distillguard.testing import (
    TEST_SECRET,
    RecordingDetector,
    StaticScoreDetector,
    capture_spans,
    jwt_config,
    make_token,
)
from tests.helpers import keys

pytestmark = pytest.mark.timeout(30)

BODY = {"model": "m", "messages": [{"role": "user", "content": "what is a transformer?"}]}


def fastapi_app(guard: Guard) -> FastAPI:
    app = FastAPI()
    app.add_middleware(DistillGuardMiddleware, guard=guard)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        return {"client": request.state.distillguard.identity.client_id}

    return app


def flask_app(guard: Guard) -> Flask:
    app = Flask("t")
    app.wsgi_app = DistillGuardWSGIMiddleware(app.wsgi_app, guard=guard)  # type: ignore[method-assign]

    @app.post("/v1/chat/completions")
    def chat() -> dict[str, Any]:
        from flask import request

        return {"client": request.environ["distillguard.identity"].client_id}

    return app


@pytest.mark.parametrize("adapter", ["fastapi", "flask"])
def test_a_scripted_verdict_with_captured_spans(adapter: str) -> None:
    """make_token's tokens pass jwt_config; a StaticScoreDetector set to 1.0 blocks; the
    RecordingDetector saw the parsed prompt; capture_spans has one decision per request."""
    recorder = RecordingDetector()
    dial = StaticScoreDetector(0.0, name="dial")
    with capture_spans() as telemetry:
        guard = Guard(jwt=jwt_config(), detectors=[recorder, dial], tracer_provider=telemetry.tracer_provider)
        headers = {"authorization": f"Bearer {make_token('alice', tier='pro', scopes=['chat'])}"}
        if adapter == "fastapi":
            client: Any = TestClient(fastapi_app(guard))
            post = lambda: client.post("/v1/chat/completions", json=BODY, headers=headers)  # noqa: E731
        else:  # buffered: the response is closed, so the guard's span has ended
            client = flask_app(guard).test_client()
            post = lambda: client.post("/v1/chat/completions", json=BODY, headers=headers, buffered=True)  # noqa: E731
        served = post()
        assert served.status_code == 200
        assert (served.json() if adapter == "fastapi" else served.json) == {"client": "alice"}
        dial.value = 1.0
        blocked = post()
        assert blocked.status_code == 429
        assert telemetry.decisions() == ["allow", "block"]
        (first, _) = recorder.observations
        assert first.query.text == "what is a transformer?" and first.identity.tier == "pro"
        assert first.identity.scopes == frozenset({"chat"})
        assert [r.score for r in recorder.results] == [0.0, 0.0]
        telemetry.clear()
        assert telemetry.spans() == []


def test_make_token_options() -> None:
    """Expired tokens, dropped claims, a kid and asymmetric keys: what a test of the error
    paths needs, all real signatures."""
    expired = make_token(ttl=-60)
    claims = pyjwt.decode(
        expired, TEST_SECRET, algorithms=["HS256"], options={"verify_exp": False}, audience="model-api"
    )
    assert claims["exp"] < claims["iat"] and claims["sub"] == "client-1"
    no_exp = pyjwt.decode(make_token(exp=None), TEST_SECRET, algorithms=["HS256"], audience="model-api")
    assert "exp" not in no_exp
    pair = keys().rsa
    token = make_token("bob", key=pair.private, algorithm="RS256", kid="k1")
    assert pyjwt.get_unverified_header(token)["kid"] == "k1"
    assert pyjwt.decode(token, pair.public, algorithms=["RS256"], audience="model-api")["sub"] == "bob"


def test_jwt_config_overrides_are_checked() -> None:
    """jwt_config passes overrides through JWTConfig's own checks."""
    assert jwt_config(leeway=30).leeway == 30
    with pytest.raises(ConfigurationError):
        jwt_config(algorithms=["none"])

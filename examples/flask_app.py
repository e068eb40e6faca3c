"""Flask example: an OpenAI-compatible mock ``POST /v1/chat/completions``, guarded.

Run it from the repository root::

    flask --app examples.flask_app run

Settings come from ``DISTILLGUARD_*`` environment variables (see :mod:`distillguard.settings`);
with none set it starts on development defaults and logs a warning. Mint a token with
``python -m examples.make_token --sub alice``. ``GET /healthz`` is exempt from the guard;
``GET /openapi.json`` describes the API and the guard's answers (:mod:`examples.openapi`).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request

from distillguard import Guard
from distillguard.flask import DistillGuard
from distillguard.settings import guard_from_env

from .mock_llm import chat_chunks, chat_completion, invalid_request, sse_events
from .openapi import openapi_schema

__all__ = ["app", "create_app"]


def create_app(guard: Guard | None = None) -> Flask:
    """The example app guarded by ``guard`` (by default one built from the environment)."""
    app = Flask(__name__)
    guard = guard if guard is not None else guard_from_env()
    DistillGuard(guard, app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json")
    def openapi() -> dict[str, Any]:
        return openapi_schema(guard.error_format)

    @app.post("/v1/chat/completions")
    def chat_completions() -> Any:
        # The guard already read and checked this body; the app gets the same bytes.
        body: Any = request.get_json(silent=True)
        error = invalid_request(body)
        if error is not None:
            return jsonify(error), 400
        if body.get("stream") is True:
            return Response(sse_events(chat_chunks(body)), mimetype="text/event-stream")
        return jsonify(chat_completion(body))

    return app


app = create_app()

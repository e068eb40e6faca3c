"""FastAPI example: an OpenAI-compatible mock ``POST /v1/chat/completions``, guarded.

Run it from the repository root::

    uvicorn examples.fastapi_app:app

Settings come from ``DISTILLGUARD_*`` environment variables (see :mod:`distillguard.settings`);
with none set it starts on development defaults and logs a warning. Mint a token with
``python -m examples.make_token --sub alice``. ``GET /healthz`` is exempt from the guard;
``GET /openapi.json`` describes the API and the guard's answers (:mod:`examples.openapi`).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from distillguard import DistillGuardMiddleware, Guard
from distillguard.settings import guard_from_env

from .mock_llm import chat_chunks, chat_completion, invalid_request, sse_events
from .openapi import openapi_schema

__all__ = ["app", "create_app"]


def create_app(guard: Guard | None = None) -> FastAPI:
    """The example app guarded by ``guard`` (by default one built from the environment)."""
    # the body is read as bytes (the app gets exactly what the client sent), so the document
    # FastAPI would generate has no request schema: the apps share a written one
    app = FastAPI(title="distillguard FastAPI example", docs_url=None, redoc_url=None, openapi_url=None)
    guard = guard if guard is not None else guard_from_env()
    app.add_middleware(DistillGuardMiddleware, guard=guard)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return openapi_schema(guard.error_format)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        # The guard already read and checked this body; the app gets the same bytes.
        try:
            body: Any = json.loads(await request.body())
        except ValueError:
            body = None
        error = invalid_request(body)
        if error is not None:
            return JSONResponse(error, status_code=400)
        if body.get("stream") is True:
            return StreamingResponse(sse_events(chat_chunks(body)), media_type="text/event-stream")
        return JSONResponse(chat_completion(body))

    return app


app = create_app()

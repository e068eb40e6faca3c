"""Small real apps for the telemetry tests: an OpenAI-style chat API in Starlette, FastAPI and
Flask. The chat endpoint answers JSON with ``usage``, or an SSE stream whose last chunk carries
``usage`` (as OpenAI does with ``stream_options.include_usage``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request as FastAPIRequest
from fastapi.responses import StreamingResponse as FastAPIStreamingResponse

CHAT_PATH = "/v1/chat/completions"
INPUT_TOKENS = 11
OUTPUT_TOKENS = 7


def chat_body(prompt: str = "hello", *, model: str = "gpt-test", max_tokens: int = 64, **extra: Any) -> bytes:
    """An OpenAI-style chat completion request body."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }
    body.update(extra)
    return json.dumps(body).encode()


def completion(text: str = "fine") -> dict[str, Any]:
    """A chat completion response with ``usage``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": INPUT_TOKENS,
            "completion_tokens": OUTPUT_TOKENS,
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS,
        },
    }


def sse_chunks(text: str = "fine") -> list[bytes]:
    """The SSE events of a streamed completion; the last data chunk carries ``usage``."""
    events = []
    for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": piece}}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n".encode())
    final = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": completion()["usage"],
    }
    events.append(f"data: {json.dumps(final)}\n\n".encode())
    events.append(b"data: [DONE]\n\n")
    return events


def starlette_app(answer: str = "fine") -> Any:
    """A Starlette app: ``POST /v1/chat/completions`` (JSON, or SSE when ``stream`` is true)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for event in sse_chunks(answer):
                    yield event

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse(completion(answer))

    return Starlette(routes=[Route(CHAT_PATH, chat, methods=["POST"])])


def fastapi_app(answer: str = "fine", **options: Any) -> Any:
    """The same API in FastAPI (``options`` go to ``FastAPI(...)``, e.g. ``telemetry=``)."""
    app = FastAPI(**options)

    @app.post(CHAT_PATH)
    async def chat(request: FastAPIRequest) -> Any:
        body = await request.json()
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for event in sse_chunks(answer):
                    yield event

            return FastAPIStreamingResponse(events(), media_type="text/event-stream")
        return completion(answer)

    return app


def flask_app(answer: str = "fine") -> Any:
    """The same API in Flask, plus ``POST /v1/predict/<model>``."""
    from flask import Flask, Response, request

    app = Flask("telemetry-tests")

    @app.post(CHAT_PATH)
    def chat() -> Any:
        body = request.get_json()
        if body.get("stream"):

            def events() -> Iterator[bytes]:
                yield from sse_chunks(answer)

            return Response(events(), mimetype="text/event-stream")
        return completion(answer)

    @app.post("/v1/predict/<model>")
    def predict(model: str) -> Any:
        return {"model": model, "label": 1}

    return app

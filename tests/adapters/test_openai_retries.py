"""OpenAI's SDK retries a 429 twice by default; a block (``suspicious_usage``) says
``x-should-retry: false``, so a blocked extractor using the SDK sends one request per call, not
three (through uvicorn, with the official ``openai`` client)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillguard import DistillGuardMiddleware, Guard
from tests.helpers import StaticDetector, jwt_config, make_token
from tests.servers import serve_in_thread

pytestmark = pytest.mark.timeout(60)


async def chat(request: Request) -> JSONResponse:
    return JSONResponse({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": []})


def test_a_blocked_client_is_not_retried_by_the_sdk() -> None:
    decisions: list[str] = []

    def count(decision: Any, request: Any) -> None:
        decisions.append(decision.action.value)

    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(1.0)], on_decision=count)
    app = DistillGuardMiddleware(
        Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]), guard=guard
    )
    with serve_in_thread(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=make_token(), max_retries=2)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert refused.value.body["code"] == "suspicious_usage"  # type: ignore[index]
    assert decisions == ["block"]

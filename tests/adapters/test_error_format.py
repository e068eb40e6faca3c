"""``Guard(error_format="openai")``: the guard's refusals in OpenAI's error shape, through the
ASGI and the WSGI adapters and read by the official ``openai`` client, with the same statuses,
headers and stable ``code`` as the problem+json default (whose detail the SDK does not show)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig
from distillguard.errors import ConfigurationError
from distillguard.problems import Problem
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, LLMApp, chat_body, llm_wsgi_app

pytestmark = [pytest.mark.timeout(30)]


def guard(error_format: Any = "openai") -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="2/minute"),
        max_body_bytes=400,
        error_format=error_format,
    )


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_refusals_in_openai_shape(kind: str) -> None:
    h = Harness(kind, guard())
    try:
        status, headers, body = h.call(chat_body(), token=None)
        assert status == 401 and headers["content-type"] == "application/json"
        assert headers["www-authenticate"].startswith("Bearer realm=")
        error = json.loads(body)["error"]
        assert error["code"] == "missing_token" and error["type"] == "authentication_error"
        assert error["param"] is None and error["message"]
        assert [h.call(chat_body())[0] for _ in range(2)] == [200, 200]
        status, headers, body = h.call(chat_body())
        assert status == 429 and int(headers["retry-after"]) >= 1
        error = json.loads(body)["error"]
        assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
        assert error["violated-policies"] == ["2-per-1-minute"]  # the extension members too
        status, headers, body = h.call(chat_body("x" * 1000))
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    finally:
        h.close()


def test_the_same_refusal_in_both_formats() -> None:
    """Status, headers (but the content type) and code are those of the problem+json answer."""
    problem = Problem.rate_limited(7, ["2-per-1-minute"])
    s1, h1, b1 = problem.render((("x-extra", "1"),))
    s2, h2, b2 = problem.render((("x-extra", "1"),), "openai")
    assert s1 == s2 == 429
    assert [h for h in h1 if h[0] not in ("content-type", "content-length")] == [
        h for h in h2 if h[0] not in ("content-type", "content-length")
    ]
    assert json.loads(b1)["code"] == json.loads(b2)["error"]["code"] == "rate_limited"
    assert json.loads(b1)["detail"] == json.loads(b2)["error"]["message"]
    with pytest.raises(ConfigurationError, match="error_format"):
        guard("xml")


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_the_openai_client_reads_the_code_and_message(kind: str) -> None:
    """OpenAI's SDK raises its own exception classes with the guard's code and message."""
    g = guard()
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport
    if kind == "wsgi":
        transport = httpx.WSGITransport(app=DistillGuardWSGIMiddleware(llm_wsgi_app, guard=g))
        client = openai.OpenAI(
            base_url="http://api.test/v1",
            api_key=make_token(),
            max_retries=0,
            http_client=httpx.Client(transport=transport),
        )
        calls = [
            lambda: client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
        ]
    else:
        import asyncio

        transport = httpx.ASGITransport(app=DistillGuardMiddleware(LLMApp(), guard=g))
        aclient = openai.AsyncOpenAI(
            base_url="http://api.test/v1",
            api_key=make_token(),
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport),
        )

        def once() -> Any:
            return asyncio.run(
                aclient.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
            )

        calls = [once]
    for _ in range(2):
        calls[0]()
    with pytest.raises(openai.RateLimitError) as caught:
        calls[0]()
    assert caught.value.code == "rate_limited" and caught.value.type == "rate_limit_error"
    # the SDK's message carries the guard's (it keeps only "Error code: 429" of a problem+json)
    assert caught.value.message == f"Error code: 429 - {Problem.rate_limited(1, []).detail}"

"""The request id on the guard's own refusals: the request's trace id, so that a client's error
report (OpenAI's SDKs report ``x-request-id`` as an error's ``request_id``) leads to its span;
none when the trace is not sampled or the header is turned off."""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from distillguard import (
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    LimitConfig,
    TelemetryConfig,
)
from distillguard.errors import ConfigurationError
from distillguard.testing import capture_spans
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import LLMApp, asgi_call, chat_body, llm_wsgi_app, wsgi_call
from tests.servers import serve_in_thread


def call(kind: str, guard: Guard, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    if kind == "asgi":
        import asyncio

        return asyncio.run(asgi_call(DistillGuardMiddleware(LLMApp(), guard=guard), chat_body(), **kw))
    status, headers, body = wsgi_call(
        DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard), chat_body(), **kw
    )
    return status, headers, body  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_refusal_names_its_trace(kind: str) -> None:
    """A 401 (no token) and a 429 carry the trace id of the guard's span; an admitted request
    gets nothing from the guard (its answer is the app's)."""
    with capture_spans() as captured:
        guard = Guard(
            jwt=jwt_config(), limits=LimitConfig(default="1/minute"), tracer_provider=captured.tracer_provider
        )
        ok = call(kind, guard, token=make_token())
        limited = call(kind, guard, token=make_token())
        anonymous = call(kind, guard, token=None)
        spans = captured.guard_spans()
    assert [ok[0], limited[0], anonymous[0]] == [200, 429, 401]
    ids = [f"{s.context.trace_id:032x}" for s in spans]
    assert "x-request-id" not in ok[1]
    assert limited[1]["x-request-id"] == ids[1] and anonymous[1]["x-request-id"] == ids[2]
    assert len(set(ids)) == 3
    from examples.openapi import openapi_schema  # the example apps document the header so

    documented = openapi_schema()["components"]["headers"]["X-Request-Id"]["schema"]["pattern"]
    assert all(re.fullmatch(documented, i) for i in ids)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_no_request_id_without_a_sampled_trace_or_when_turned_off(kind: str) -> None:
    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    guard = Guard(jwt=jwt_config(), tracer_provider=sampled_out)
    assert "x-request-id" not in call(kind, guard, token=None)[1]
    with capture_spans() as captured:
        off = Guard(
            jwt=jwt_config(),
            tracer_provider=captured.tracer_provider,
            telemetry=TelemetryConfig(request_id_header=None),
        )
        assert "x-request-id" not in call(kind, off, token=None)[1]
        named = Guard(
            jwt=jwt_config(),
            tracer_provider=captured.tracer_provider,
            telemetry=TelemetryConfig(request_id_header="x-trace-id"),
        )
        assert len(call(kind, named, token=None)[1]["x-trace-id"]) == 32


@pytest.mark.parametrize("name", ["X-Request-Id", "", "x request id", "x-request-id\r\n"])
def test_the_header_name_is_checked(name: str) -> None:
    with pytest.raises(ConfigurationError):
        TelemetryConfig(request_id_header=name)


def test_the_openai_client_reports_the_trace_as_the_request_id() -> None:
    """Over real HTTP: the official client's error carries the span's trace id."""
    with capture_spans() as captured:
        guard = Guard(jwt=jwt_config(), tracer_provider=captured.tracer_provider)
        with serve_in_thread(DistillGuardMiddleware(LLMApp(), guard=guard)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-token", max_retries=0)
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        (span,) = captured.guard_spans()
    assert caught.value.request_id == f"{span.context.trace_id:032x}"


def test_the_app_reads_the_request_id_for_its_own_errors() -> None:
    """The same id is at ``scope["distillguard.request_id"]`` / ``environ[...]`` for the app's
    own error answers (the gateway's 502 and 504 use it); ``None`` when sampled out."""
    import asyncio

    seen: list[object] = []

    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["distillguard.request_id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append(environ["distillguard.request_id"])
        start_response("204 No Content", [])
        return []

    with capture_spans() as captured:
        guard = Guard(jwt=jwt_config(), tracer_provider=captured.tracer_provider)
        asyncio.run(asgi_call(DistillGuardMiddleware(asgi_app, guard=guard), chat_body(), token=make_token()))
        wsgi_call(DistillGuardWSGIMiddleware(wsgi_app, guard=guard), chat_body(), token=make_token())
        ids = [f"{s.context.trace_id:032x}" for s in captured.guard_spans()]
    assert seen == ids and len(ids) == 2
    quiet = Guard(jwt=jwt_config(), tracer_provider=TracerProvider(sampler=ALWAYS_OFF))
    wsgi_call(DistillGuardWSGIMiddleware(wsgi_app, guard=quiet), chat_body(), token=make_token())
    assert seen[-1] is None

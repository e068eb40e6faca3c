"""A streamed answer is cut once its client goes into the penalty box (``Policy.stream_recheck``):
a server-sent event stream gets a last ``error`` event, between two events, which OpenAI's SDK
raises as an ``APIError``; the app hears that the client left and stops generating; the span
says so. Clients not boxed, shadow mode, ``stream_recheck=None`` and answers of a declared
length are never cut (reliability.md A9)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, Policy
from distillguard.risk import RiskPolicy
from distillguard.telemetry.names import EVENT_STREAM_ENDED
from tests.helpers import Dial, guard_spans, jwt_config, make_token
from tests.limiting.apps import chat_body, wsgi_call
from tests.servers import serve_in_thread

EVENTS = 200
CHAT = "/v1/chat/completions"
STREAM = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": True}
).encode()


def _event(i: int) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class Generation:
    """What the app generated, and whether it was stopped before the end."""

    def __init__(self) -> None:
        self.generated = 0
        self.finished = threading.Event()  # the generator exited, one way or another
        self.completed = False


def starlette_app(generation: Generation) -> Starlette:
    async def chat(request: Request) -> Any:
        body = await request.json()
        if not body.get("stream"):
            return StreamingResponse(iter([b"{}"]), media_type="application/json")

        async def events() -> Any:
            try:
                for i in range(EVENTS):
                    generation.generated += 1
                    yield _event(i)
                    await anyio.sleep(0.02)
                yield b"data: [DONE]\n\n"
                generation.completed = True
            finally:
                generation.finished.set()

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route(CHAT, chat, methods=["POST"])])


def wsgi_app(generation: Generation, split: bool = False) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events() -> Iterator[bytes]:
            try:
                for i in range(EVENTS):
                    generation.generated += 1
                    event = _event(i)
                    if split:  # an event cut across two chunks
                        yield event[:20]
                        yield event[20:]
                    else:
                        yield event
                    time.sleep(0.01)
                yield b"data: [DONE]\n\n"
                generation.completed = True
            finally:
                generation.finished.set()

        return events()

    return app


def guard(dial: Dial, tracer_provider: Any = None, meter_provider: Any = None, **policy: Any) -> Guard:
    policy.setdefault("risk", RiskPolicy(penalty_seconds=60))
    policy.setdefault("stream_recheck", 0.01)
    return Guard(
        jwt=jwt_config(),
        detectors=[dial],
        policy=Policy(**policy),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )


def test_a_boxed_clients_stream_ends_with_an_error_the_openai_sdk_raises() -> None:
    """Through uvicorn: the client streams with OpenAI's SDK; after 3 chunks one of its other
    requests is blocked (the penalty box); its stream then ends with an ``error`` event that
    the SDK raises as ``APIError``, and the app's generator is stopped well before its end."""
    import openai

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider.add_span_processor(SimpleSpanProcessor(exporter))
    dial, generation = Dial(), Generation()
    app = DistillGuardMiddleware(starlette_app(generation), guard=guard(dial, provider))
    token = make_token(sub="thief")
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        got: list[Any] = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 3:  # another request of the client is blocked
                    dial.value = 1.0
                    blocked = httpx.post(
                        f"{url}{CHAT}", content=chat_body(), headers={"authorization": f"Bearer {token}"}
                    )
                    assert blocked.status_code == 429
        assert info.value.message == "This client's usage pattern is not allowed."
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "suspicious_usage"
        assert 3 <= len(got) < EVENTS
        assert generation.finished.wait(5)
        assert not generation.completed and generation.generated < EVENTS
    provider.force_flush()
    streamed = [s for s in guard_spans(exporter) if s.attributes.get("distillguard.decision") == "allow"]
    (span,) = streamed
    assert span.attributes[EVENT_STREAM_ENDED] is True
    (event,) = [e for e in span.events if e.name == EVENT_STREAM_ENDED]
    assert list(event.attributes["distillguard.reasons"]) == ["risk:penalty_box"]


def open_stream(mw: Any, token: str, first: int = 2) -> tuple[Any, Iterator[bytes], bytes]:
    """Start a streamed chat answer through the WSGI ``mw``: ``(the answer, the rest of its
    chunks, its first ``first`` chunks)``."""
    status, _, result = wsgi_call(mw, STREAM, token=token, consume=False)
    assert status == 200
    chunks = iter(result)
    return result, chunks, b"".join(next(chunks) for _ in range(first))


def _frames(payload: bytes) -> list[bytes]:
    return [f for f in payload.split(b"\n\n") if f]


@pytest.mark.parametrize("split", [False, True], ids=["whole-events", "events-split-across-chunks"])
def test_a_wsgi_stream_is_cut_between_two_events_and_the_app_closed(split: bool) -> None:
    """The WSGI answer ends with the ``error`` event, sent between two events even when the
    app's chunks cut events in two; every frame is a whole event; closing the answer closes
    the app's generator; the ``distillguard.streams.ended`` metric counts it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from distillguard.telemetry.names import METRIC_STREAMS_ENDED
    from tests.telemetry.conftest import metric_points, value_of

    reader = InMemoryMetricReader()
    dial, generation = Dial(), Generation()
    g = guard(dial, meter_provider=MeterProvider(metric_readers=[reader]))
    assert not metric_points(reader).get(METRIC_STREAMS_ENDED)
    mw = DistillGuardWSGIMiddleware(wsgi_app(generation, split), guard=g)
    token = make_token(sub="thief")
    result, chunks, out = open_stream(mw, token, first=6)
    dial.value = 1.0  # another request of the client is blocked
    assert wsgi_call(mw, chat_body(), token=token)[0] == 429
    out += b"".join(chunks)
    result.close()
    frames = _frames(out)
    docs = [json.loads(f[len(b"data: ") :]) for f in frames]
    assert docs[-1]["error"]["code"] == "suspicious_usage" and 1 <= docs[-1]["error"]["retry_after"] <= 61
    assert all("choices" in d for d in docs[:-1]) and 3 <= len(docs) - 1 < EVENTS
    assert generation.finished.is_set() and not generation.completed
    ended = metric_points(reader)[METRIC_STREAMS_ENDED]
    assert value_of(ended, distillguard__stream__reason="risk:penalty_box") == 1


@pytest.mark.parametrize(
    "variant", ["other-client-boxed", "shadow", "recheck-off", "no-risk-policy", "declared-length"]
)
def test_streams_that_are_never_cut(variant: str) -> None:
    """Another client boxed, shadow mode, ``stream_recheck=None``, no risk policy (nothing
    boxes), or an answer with a ``Content-Length``: the stream is sent whole."""
    dial, generation = Dial(), Generation()
    options: dict[str, Any] = {
        "shadow": {"shadow": True},
        "recheck-off": {"stream_recheck": None},
        "no-risk-policy": {"risk": None},
    }.get(variant, {})
    g = guard(dial, **options)
    app = wsgi_app(generation)
    if variant == "declared-length":
        inner = app

        def app(environ: dict[str, Any], start_response: Any) -> Any:  # type: ignore[misc]
            whole = b"".join(inner(environ, lambda *a: None))
            start_response(
                "200 OK", [("Content-Type", "text/event-stream"), ("Content-Length", str(len(whole)))]
            )
            return [whole[i : i + 500] for i in range(0, len(whole), 500)]

    mw = DistillGuardWSGIMiddleware(app, guard=g)
    thief = make_token(sub="thief")
    result, chunks, out = open_stream(mw, thief)
    dial.value = 1.0
    blocked = make_token(sub="someone-else") if variant == "other-client-boxed" else thief
    # without a risk policy the block is the request's alone (no box); shadow: recorded only
    assert wsgi_call(mw, chat_body(), token=blocked)[0] == (200 if variant == "shadow" else 429)
    time.sleep(0.05)
    out += b"".join(chunks)
    result.close()
    assert out.endswith(b"data: [DONE]\n\n") and b'"error"' not in out
    assert len(_frames(out)) == EVENTS + 1

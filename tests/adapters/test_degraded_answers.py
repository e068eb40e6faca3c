"""A degraded request's answer carries no log probabilities, even when the model server sends
them although the request no longer asked for them: each choice's ``logprobs`` becomes
``null`` in JSON answers and in every streamed event, in both adapters; allowed and shadow
answers keep theirs byte for byte."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, Policy
from distillguard.watermark import Watermark
from tests.helpers import StaticDetector, jwt_config, make_token
from tests.limiting.apps import asgi_call, wsgi_call

LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]}
ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Rivers often flood."},
            "logprobs": LOGPROBS,
            "finish_reason": "stop",
        }
    ],
}


def _events() -> list[bytes]:
    base = {"id": "c1", "object": "chat.completion.chunk"}
    pieces = ["Rivers ", "often ", "flood."]
    out = [
        b"data: "
        + json.dumps(
            {**base, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": LOGPROBS}]}
        ).encode()
        + b"\n\n"
        for p in pieces
    ]
    finish = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    out.append(b"data: " + json.dumps(finish).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _answer(path: str) -> tuple[str, list[bytes]]:
    if path == "/v1/stream":
        return "text/event-stream", _events()
    body = json.dumps(ANSWER).encode()
    return "application/json", [body[:40], body[40:]]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body", False):
        pass
    kind, chunks = _answer(scope["path"])
    headers = [(b"content-type", kind.encode()), (b"content-length", str(sum(map(len, chunks))).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    kind, chunks = _answer(environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(sum(map(len, chunks))))])
    return iter(chunks)


def call(kind: str, guard: Guard, path: str) -> tuple[int, dict[str, str], bytes]:
    request = {"model": "m", "messages": [{"role": "user", "content": "rivers?"}], "logprobs": True}
    if path == "/v1/stream":
        request["stream"] = True
    data = json.dumps(request).encode()
    if kind == "asgi":
        return asyncio.run(
            asgi_call(DistillGuardMiddleware(asgi_app, guard=guard), data, token=make_token(), path=path)
        )
    status, headers, payload = wsgi_call(
        DistillGuardWSGIMiddleware(wsgi_app, guard=guard), data, token=make_token(), path=path
    )
    return status, headers, payload


def _choices(payload: bytes, stream: bool) -> list[dict[str, Any]]:
    if not stream:
        return list(json.loads(payload)["choices"])
    return [
        choice
        for event in payload.split(b"\n\n")
        if event.startswith(b"data: {")
        for choice in json.loads(event[6:])["choices"]
    ]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/stream"])
def test_a_degraded_answer_has_no_logprobs(kind: str, path: str) -> None:
    stream = path == "/v1/stream"
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)])  # degrade with the default policy
    status, headers, payload = call(kind, guard, path)
    assert status == 200 and "content-length" not in headers
    choices = _choices(payload, stream)
    assert choices and all(choice["logprobs"] is None for choice in choices)
    text = "".join(
        (c.get("delta", {}).get("content") or "") if stream else c["message"]["content"] for c in choices
    )
    assert text == "Rivers often flood."  # the text itself is unchanged
    assert payload.endswith(b"data: [DONE]\n\n") == stream


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/stream"])
def test_allowed_and_shadow_answers_keep_their_logprobs_byte_for_byte(kind: str, path: str) -> None:
    _, chunks = _answer(path)
    for guard in (
        Guard(jwt=jwt_config(), detectors=[StaticDetector(0.1)]),
        Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)], policy=Policy(shadow=True)),
        Guard(
            jwt=jwt_config(), detectors=[StaticDetector(0.8)], policy=Policy(degrade_fields=("logit_bias",))
        ),
    ):
        status, headers, payload = call(kind, guard, path)
        assert status == 200 and payload == b"".join(chunks)
        assert headers["content-length"] == str(len(payload))


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_degraded_marked_answer_is_both_stripped_and_marked(kind: str) -> None:
    watermark = Watermark(b"a-secret-watermark-key-of-32-bytes")
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)], watermark=watermark)
    for path in ("/v1/chat/completions", "/v1/stream"):
        stream = path == "/v1/stream"
        _, _, payload = call(kind, guard, path)
        choices = _choices(payload, stream)
        assert all(choice["logprobs"] is None for choice in choices)
        text = "".join(
            (c.get("delta", {}).get("content") or "") if stream else c["message"]["content"] for c in choices
        )
        assert text == watermark.mark("Rivers often flood.")

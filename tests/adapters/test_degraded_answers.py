"""A degraded request's answer carries no log probabilities, even when the model server sends
them although the request no longer asked for them: each choice's ``logprobs`` becomes
``null`` in JSON answers and in every streamed event, in both adapters; allowed and shadow
answers keep theirs byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
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
def test_the_degrade_header_says_what_was_taken_out(kind: str) -> None:
    """``Policy(degrade_header=...)`` tells a degraded client what it lost: the answer's
    logprobs, the request fields removed and a capped ``max_tokens``. Off by default, and
    never in shadow mode or on an answer that was not degraded."""
    from distillguard.errors import ConfigurationError

    def header(score: float, **policy: Any) -> str | None:
        guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(score)], policy=Policy(**policy))
        status, headers, _ = call(kind, guard, "/v1/chat/completions")
        assert status == 200
        return headers.get("x-distillguard-degraded")

    named = {"degrade_header": "X-Distillguard-Degraded"}
    assert header(0.8, **named) == "logprobs"  # the request's own ``logprobs`` field, once
    assert header(0.8, **named, degrade_max_tokens=64) == "logprobs,max_tokens"
    assert header(0.8, **named, degrade_fields=("temperature",)) == "logprobs"  # not sent: not named
    assert header(0.8) is None  # off by default
    assert header(0.8, **named, shadow=True) is None
    assert header(0.6, **named) is None  # flagged, not degraded
    with pytest.raises(ConfigurationError, match="degrade_header"):
        Policy(degrade_header="X-Bad Header")


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


def _compress(data: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if encoding == "deflate":  # HTTP's deflate: the zlib format
        return zlib.compress(data)
    if encoding == "deflate-raw":  # what some servers send as deflate: no zlib header
        squeeze = zlib.compressobj(wbits=-15)
        return squeeze.compress(data) + squeeze.flush()
    return b"\x0b\x08\x80" + data + b"\x03"  # "br": bytes the standard library cannot read


class Compressing:
    """An app that compresses its answer whatever the request says (as a misconfigured model
    server does), in both interfaces; ``seen`` holds each request's ``Accept-Encoding``."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.seen: list[str | None] = []

    def _answer(self, path: str) -> tuple[list[tuple[str, str]], list[bytes]]:
        kind, chunks = _answer(path)
        body = _compress(b"".join(chunks), self.encoding)
        cut = len(body) // 3
        name = "deflate" if self.encoding == "deflate-raw" else self.encoding
        headers = [("content-type", kind), ("content-encoding", name), ("content-length", str(len(body)))]
        return headers, [body[:cut], body[cut : 2 * cut], body[2 * cut :]]

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.seen.append(dict(scope["headers"]).get(b"accept-encoding", b"").decode() or None)
        headers, chunks = self._answer(scope["path"])
        raw = [(k.encode(), v.encode()) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.seen.append(environ.get("HTTP_ACCEPT_ENCODING"))
        headers, chunks = self._answer(environ["PATH_INFO"])
        start_response("200 OK", headers)
        return iter(chunks)


def _through(kind: str, app: Compressing, guard: Guard, path: str) -> tuple[int, dict[str, str], bytes]:
    request = {"model": "m", "messages": [{"role": "user", "content": "rivers?"}], "logprobs": True}
    if path == "/v1/stream":
        request["stream"] = True
    data = json.dumps(request).encode()
    asked = {"accept-encoding": "gzip, br"}
    if kind == "asgi":
        mw = DistillGuardMiddleware(app.asgi, guard=guard)
        return asyncio.run(asgi_call(mw, data, token=make_token(), path=path, headers=asked))
    wsgi = DistillGuardWSGIMiddleware(app.wsgi, guard=guard)
    status, headers, payload = wsgi_call(wsgi, data, token=make_token(), path=path, headers=asked)
    return status, headers, payload


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "deflate-raw"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/stream"])
def test_a_compressed_degraded_answer_is_decoded_and_stripped(kind: str, encoding: str, path: str) -> None:
    """The app is asked for an uncompressed answer; when it compresses anyway with an encoding
    the standard library reads, the answer is decoded, stripped of its log probabilities and
    sent plain (no ``Content-Encoding``, no stale ``Content-Length``)."""
    app = Compressing(encoding)
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)])
    status, headers, payload = _through(kind, app, guard, path)
    assert app.seen == ["identity"]
    assert status == 200 and "content-encoding" not in headers and "content-length" not in headers
    choices = _choices(payload, path == "/v1/stream")
    assert choices and all(choice["logprobs"] is None for choice in choices)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_compressed_marked_answer_is_decoded_and_marked(kind: str) -> None:
    """The watermark reads a gzip answer too: every chat answer asks the app for identity."""
    watermark = Watermark(b"a-secret-watermark-key-of-32-bytes")
    app = Compressing("gzip")
    guard = Guard(jwt=jwt_config(), watermark=watermark)
    status, headers, payload = _through(kind, app, guard, "/v1/chat/completions")
    assert app.seen == ["identity"] and status == 200 and "content-encoding" not in headers
    (choice,) = _choices(payload, False)
    assert choice["message"]["content"] == watermark.mark("Rivers often flood.")
    assert choice["logprobs"] == LOGPROBS  # allowed: only the text is marked


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_unreadable_encoding_passes_unchanged_and_is_counted(kind: str) -> None:
    """An encoding the standard library cannot read (``br``) passes byte for byte, with its
    headers; the ``distillguard.watermark.unmarked`` metric counts it with reason ``encoding``."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from distillguard.telemetry.names import METRIC_WATERMARK_UNMARKED
    from tests.telemetry.conftest import metric_points, value_of

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    app = Compressing("br")
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)], meter_provider=meters)
    status, headers, payload = _through(kind, app, guard, "/v1/chat/completions")
    _, chunks = app._answer("/v1/chat/completions")
    assert status == 200 and payload == b"".join(chunks)
    assert headers["content-encoding"] == "br" and headers["content-length"] == str(len(payload))
    unmarked = metric_points(reader)[METRIC_WATERMARK_UNMARKED]
    assert value_of(unmarked, distillguard__watermark__reason="encoding") == 1


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_answers_that_are_not_rewritten_keep_the_clients_accept_encoding(kind: str) -> None:
    """Without a watermark an allowed answer is never rewritten: the app sees the client's
    ``Accept-Encoding`` and its compressed answer passes byte for byte."""
    app = Compressing("gzip")
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.1)])
    status, headers, payload = _through(kind, app, guard, "/v1/chat/completions")
    _, chunks = app._answer("/v1/chat/completions")
    assert app.seen == ["gzip, br"]
    assert status == 200 and payload == b"".join(chunks) and headers["content-encoding"] == "gzip"


def test_starlette_gzip_inside_the_guard_serves_a_degraded_client_plain() -> None:
    """A real compressing middleware inside the guard (Starlette's ``GZipMiddleware``): a
    degraded client's answer comes uncompressed and without log probabilities, an allowed
    client's comes gzip-compressed with them, through real HTTP handling (Starlette's
    ``TestClient``)."""
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.testclient import TestClient

    def served(score: float) -> Any:
        guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(score)])
        mw = DistillGuardMiddleware(GZipMiddleware(asgi_app, minimum_size=1), guard=guard)
        return TestClient(mw).post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "rivers?"}], "logprobs": True},
            headers={"authorization": f"Bearer {make_token()}", "accept-encoding": "gzip"},
        )

    degraded = served(0.8)
    assert degraded.status_code == 200 and "content-encoding" not in degraded.headers
    assert degraded.json()["choices"][0]["logprobs"] is None
    allowed = served(0.1)
    assert allowed.headers["content-encoding"] == "gzip"
    assert allowed.json()["choices"][0]["logprobs"] == LOGPROBS  # httpx decoded it

"""OpenAI's Responses API (``POST /v1/responses``): its requests are read as conversations
(prompt text from ``instructions`` and ``input``, ``max_output_tokens``, log probabilities asked
through ``include`` or ``top_logprobs``), told from embeddings requests by path and shape;
degrading removes the log-probability request; its answers (a ``response`` object, or its
event stream) are watermarked and stripped like chat answers, through OpenAI's SDK."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from distillguard import DistillGuardMiddleware, Guard, Policy
from distillguard._marking import ResponseMarking
from distillguard.flow import degrade_body
from distillguard.query import RESPONSES_LOGPROBS, parse_query
from distillguard.watermark import Watermark
from tests.helpers import StaticDetector, jwt_config, make_token, read_body
from tests.servers import serve_in_thread

KEY = b"responses-watermark-key-0123456789"
TEXT = (
    "Rivers often flood large areas quickly, and people usually help each other to begin repairs "
    "because big storms start suddenly"  # no full stop: the last word is held until its part ends
)
LOGPROBS = [{"token": "Rivers", "logprob": -0.1, "bytes": [82], "top_logprobs": []}]


def _body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", **fields}).encode()


def test_a_responses_request_is_a_conversation() -> None:
    items = [
        {"role": "user", "content": "What do rivers do?"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Answer briefly."}]},
    ]
    body = _body(
        instructions="You are terse.",
        input=items,
        max_output_tokens=64,
        include=[RESPONSES_LOGPROBS],
        top_logprobs=5,
        stream=True,
    )
    query = parse_query(body, "application/json", "/v1/responses")
    assert query.kind == "chat" and query.text == "You are terse.\nWhat do rivers do?\nAnswer briefly."
    assert query.max_tokens == 64 and query.logprobs and query.top_logprobs == 5 and query.stream
    only_include = parse_query(_body(input="hi", include=[RESPONSES_LOGPROBS]), path="/v1/responses")
    assert only_include.logprobs and only_include.top_logprobs is None


@pytest.mark.parametrize(
    ("body", "path", "kind"),
    [
        (_body(input="hello"), "/v1/responses", "chat"),
        (_body(input="hello"), "/v1/embeddings", "embedding"),
        (_body(input="hello"), "/custom/route", "embedding"),  # a bare body: embeddings
        (_body(input="hello", stream=True), "/custom/route", "chat"),  # a field embeddings lack
        (_body(input=[{"role": "user", "content": "hi"}]), "/custom/route", "chat"),  # items
        (_body(input=["a", "b"], dimensions=64), "/v1/embeddings", "embedding"),
        (_body(input=[[1, 2, 3]]), "/v1/embeddings", "embedding"),
    ],
)
def test_responses_and_embeddings_are_told_apart(body: bytes, path: str, kind: str) -> None:
    assert parse_query(body, "application/json", path).kind == kind


def test_degrading_a_responses_request_drops_its_logprobs_request() -> None:
    body = _body(input="hi", include=[RESPONSES_LOGPROBS, "reasoning.encrypted_content"], top_logprobs=3)
    rewritten = degrade_body(parse_query(body, path="/v1/responses"), Policy())
    assert rewritten is not None
    doc = json.loads(rewritten)
    assert doc["include"] == ["reasoning.encrypted_content"] and "top_logprobs" not in doc
    assert doc["input"] == "hi"


def _response(text: str, logprobs: list[Any]) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "model": "m",
        "status": "completed",
        "output": [item],
        "usage": {"input_tokens": 5, "output_tokens": 20, "total_tokens": 25},
    }


def _events(text: str, pieces: list[str]) -> list[bytes]:
    """A Responses API event stream for one message with one text part."""
    out: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**_response("", []), "output": []}}
    ]
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    for piece in pieces:
        out.append({"type": "response.output_text.delta", **where, "delta": piece, "logprobs": LOGPROBS})
    out.append({"type": "response.output_text.done", **where, "text": text, "logprobs": LOGPROBS})
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": LOGPROBS}
    out.append({"type": "response.content_part.done", **where, "part": part})
    done = _response(text, LOGPROBS)
    out.append({"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]})
    out.append({"type": "response.completed", "response": done})
    return [
        f"event: {doc['type']}\ndata: {json.dumps({**doc, 'sequence_number': i})}\n\n".encode()
        for i, doc in enumerate(out)
    ]


def test_a_responses_object_is_marked_and_stripped() -> None:
    watermark = Watermark(KEY)
    marking = ResponseMarking(watermark, strip=True)
    assert marking.start(200, "application/json")
    out = json.loads(marking.feed(json.dumps(_response(TEXT, LOGPROBS)).encode()) + marking.end())
    (part,) = out["output"][0]["content"]
    assert part["text"] == watermark.mark(TEXT) != TEXT and part["logprobs"] == []
    assert out["usage"]["output_tokens"] == 20


def _parse(stream: bytes) -> list[dict[str, Any]]:
    docs = []
    for frame in stream.split(b"\n\n"):
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                docs.append(json.loads(line[6:]))
    return docs


@pytest.mark.parametrize("seed", range(12))
def test_a_responses_stream_cut_anywhere_is_marked_as_its_whole_text(seed: int) -> None:
    """The deltas (with the held words' own delta before ``response.output_text.done``) add up
    to ``mark`` of the whole text, and every full text the stream repeats (the done event,
    the part, the item, the completed response) is that same marked text; with ``strip``, no
    log probabilities are left."""
    rng = random.Random(seed)
    watermark = Watermark(KEY)
    pieces, i = [], 0
    while i < len(TEXT):
        step = rng.randint(1, 9)
        pieces.append(TEXT[i : i + step])
        i += step
    stream = b"".join(_events(TEXT, pieces))
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 30)))
    marking = ResponseMarking(watermark, strip=True)
    assert marking.start(200, "text/event-stream")
    spans = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    out = b"".join(marking.feed(stream[a:b]) for a, b in spans) + marking.end()
    docs = _parse(out)
    marked = watermark.mark(TEXT)
    assert "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta") == marked
    (done,) = [d for d in docs if d["type"] == "response.output_text.done"]
    (part,) = [d["part"] for d in docs if d["type"] == "response.content_part.done"]
    (item,) = [d["item"] for d in docs if d["type"] == "response.output_item.done"]
    (completed,) = [d["response"] for d in docs if d["type"] == "response.completed"]
    assert done["text"] == part["text"] == item["content"][0]["text"] == marked
    assert completed["output"][0]["content"][0]["text"] == marked
    assert b'"token"' not in out  # every log probability stripped
    kinds = [d["type"] for d in docs]
    assert kinds[-1] == "response.completed"
    last_delta = max(i for i, k in enumerate(kinds) if k == "response.output_text.delta")
    assert last_delta < kinds.index("response.output_text.done")  # the held words come first


class ResponsesServer:
    """A stand-in model server for ``POST /v1/responses`` (JSON or SSE); records what it got."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        doc = json.loads(body)
        self.seen.append(doc)
        if doc.get("stream"):
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for event in _events(TEXT, [TEXT[i : i + 7] for i in range(0, len(TEXT), 7)]):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        payload = json.dumps(_response(TEXT, LOGPROBS)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def test_openais_sdk_reads_marked_and_degraded_responses() -> None:
    """Through uvicorn with OpenAI's SDK: a degraded client's request reaches the model server
    without its log-probability request, and its answers (whole and streamed) come back marked
    and without log probabilities; the SDK parses every event."""
    import openai

    watermark = Watermark(KEY)
    server = ResponsesServer()
    guard = Guard(jwt=jwt_config(), detectors=[StaticDetector(0.8)], watermark=watermark)  # degrade
    with serve_in_thread(DistillGuardMiddleware(server, guard=guard)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=make_token(), max_retries=0)
        asked: dict[str, Any] = {"include": [RESPONSES_LOGPROBS], "top_logprobs": 5}
        whole = client.responses.create(model="m", input="What do rivers do?", **asked)
        assert whole.output_text == watermark.mark(TEXT)
        assert not whole.output[0].content[0].logprobs  # type: ignore[union-attr]
        deltas: list[str] = []
        final = None
        for event in client.responses.create(model="m", input="What do rivers do?", stream=True, **asked):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
                assert not event.logprobs
            elif event.type == "response.completed":
                final = event.response
        assert "".join(deltas) == watermark.mark(TEXT)
        assert final is not None and final.output_text == watermark.mark(TEXT)
    assert [("include" in seen, "top_logprobs" in seen) for seen in server.seen] == [(True, False)] * 2
    assert all(seen["include"] == [] for seen in server.seen)

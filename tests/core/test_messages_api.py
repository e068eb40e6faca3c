"""Anthropic's Messages API (``POST /v1/messages``): its requests are conversations (``messages``),
and its answers are watermarked like chat answers: the ``text`` blocks of a ``message``, and the
``text_delta`` events of a stream, with the words held back at a cut sent in a delta of their own
before the block's ``content_block_stop``; through the ASGI middleware."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from distillguard import DistillGuardMiddleware, Guard
from distillguard._marking import ResponseMarking
from distillguard.query import parse_query
from distillguard.watermark import Watermark
from tests.helpers import jwt_config, make_token, read_body
from tests.limiting.apps import asgi_call

KEY = b"messages-watermark-key-0123456789ab"
TEXT = (
    "Rivers often flood large areas quickly, and people usually help each other to begin repairs "
    "because big storms start suddenly"  # no full stop: the last word is held until its part ends
)
REQUEST = {
    "model": "claude",
    "max_tokens": 256,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Rivers?"}],
}


def _message(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        ],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 21},
    }


def _events(pieces: list[str]) -> bytes:
    docs: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**_message(""), "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 21}},
        {"type": "message_stop"},
    ]
    return b"".join(f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in docs)


def _deltas(stream: bytes) -> tuple[str, list[str]]:
    text, kinds = "", []
    for frame in stream.split(b"\n\n"):
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                doc = json.loads(line[6:])
                kinds.append(doc["type"])
                if doc["type"] == "content_block_delta":
                    text += doc["delta"]["text"]
    return text, kinds


def test_a_messages_request_is_a_conversation() -> None:
    query = parse_query(json.dumps(REQUEST).encode(), "application/json", "/v1/messages")
    assert query.kind == "chat" and "Rivers?" in query.text and query.max_tokens == 256


def test_a_message_is_marked() -> None:
    watermark = Watermark(KEY)
    marking = ResponseMarking(watermark)
    assert marking.start(200, "application/json")
    out = json.loads(marking.feed(json.dumps(_message(TEXT)).encode()) + marking.end())
    assert out["content"][0]["text"] == watermark.mark(TEXT) != TEXT
    assert out["content"][1] == _message(TEXT)["content"][1] and out["usage"]["output_tokens"] == 21


@pytest.mark.parametrize("seed", range(12))
def test_a_message_stream_cut_anywhere_is_marked_as_its_whole_text(seed: int) -> None:
    rng = random.Random(seed)
    watermark = Watermark(KEY)
    cuts_of_text = sorted(rng.sample(range(1, len(TEXT)), rng.randint(3, 30)))
    pieces = [TEXT[a:b] for a, b in zip([0, *cuts_of_text], [*cuts_of_text, len(TEXT)], strict=True)]
    stream = _events(pieces)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 30)))
    marking = ResponseMarking(watermark)
    assert marking.start(200, "text/event-stream")
    spans = zip([0, *cuts], [*cuts, len(stream)], strict=True)
    out = b"".join(marking.feed(stream[a:b]) for a, b in spans) + marking.end()
    text, kinds = _deltas(out)
    assert text == watermark.mark(TEXT)
    assert kinds.index("content_block_stop") > max(
        i for i, k in enumerate(kinds) if k == "content_block_delta"
    )
    assert kinds[-1] == "message_stop"


def test_the_middleware_marks_a_messages_stream() -> None:
    """Through the ASGI middleware, an answer streamed in uneven chunks."""
    watermark = Watermark(KEY)
    stream = _events([TEXT[i : i + 5] for i in range(0, len(TEXT), 5)])

    async def model(scope: Any, receive: Any, send: Any) -> None:
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(0, len(stream), 97):
            await send({"type": "http.response.body", "body": stream[i : i + 97], "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    mw = DistillGuardMiddleware(model, guard=Guard(jwt=jwt_config(), watermark=watermark))
    body = json.dumps({**REQUEST, "stream": True}).encode()
    status, _, payload = asyncio.run(asgi_call(mw, body, token=make_token(), path="/v1/messages"))
    assert status == 200 and _deltas(payload)[0] == watermark.mark(TEXT)

"""Stripping log probabilities from a streamed answer (``ResponseMarking(strip=True)``), whatever
the chunking: an answer cut at any byte offsets comes out exactly as when fed whole; no event is
dropped or merged; ``data: [DONE]`` is kept; no choice keeps its ``logprobs``; and an event too
long to hold passes unchanged and is flagged."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings, strategies as st

from distillguard._marking import MAX_EVENT, ResponseMarking

LOGPROBS = {
    "content": [{"token": "Hi", "logprob": -0.25, "top_logprobs": [{"token": "Hi", "logprob": -0.25}]}]
}
COMPLETION_LOGPROBS = {"tokens": ["Hi"], "token_logprobs": [-0.25], "top_logprobs": [{"Hi": -0.25}]}
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def _chat(piece: str, index: int) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [
            {"index": index, "delta": {"content": piece}, "logprobs": LOGPROBS, "finish_reason": None}
        ],
    }


def _completion(piece: str, index: int) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "text_completion",
        "choices": [{"index": index, "text": piece, "logprobs": COMPLETION_LOGPROBS, "finish_reason": None}],
    }


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, int]:
    """An SSE answer (chat or completion chunks with logprobs, comments, a non-JSON event, one
    line ending style) and how many events it has."""
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    make = draw(st.sampled_from([_chat, _completion]))
    pieces = draw(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=8))
    events: list[str] = []
    for i, piece in enumerate(pieces):
        events.append("data: " + json.dumps(make(piece, i % 2), ensure_ascii=draw(st.booleans())))
        if draw(st.booleans()):
            events.append(draw(st.sampled_from([": keep-alive", "event: ping\ndata: {}", "data: not json"])))
    events.append("data: [DONE]")
    text = "".join(e.replace("\n", end) + end + end for e in events)
    return text.encode(), len(events)


def _run(stream: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    marking = ResponseMarking(None, strip=True)
    assert marking.start(200, "text/event-stream")
    out = b""
    start = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        out += marking.feed(stream[start:cut])
        start = cut
    return out + marking.end(), marking.overflowed


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12))
def test_any_chunking_strips_the_same_events(sample: tuple[bytes, int], cuts: list[int]) -> None:
    stream, count = sample
    whole, overflowed = _run(stream, [])
    assert not overflowed
    assert _run(stream, cuts) == (whole, False)
    events = [e for e in _BOUNDARY.split(whole) if e.strip()]
    assert len(events) == count  # none dropped, none merged
    assert events[-1] == b"data: [DONE]"
    for event in events:
        if event.startswith(b"data: {") and b'"choices"' in event:
            for choice in json.loads(event[6:])["choices"]:
                assert choice["logprobs"] is None
        elif not event.startswith(b"data: {"):
            assert event in stream  # comments, other events and non-JSON data pass unchanged


@settings(max_examples=100, deadline=None)
@given(streams())
def test_every_single_byte_chunking(sample: tuple[bytes, int]) -> None:
    """The worst chunking: one byte at a time."""
    stream, _ = sample
    assert _run(stream, list(range(len(stream)))) == _run(stream, [])


def test_an_event_too_long_to_hold_passes_unchanged_and_is_flagged() -> None:
    """An event over ``MAX_EVENT`` (a stream that never sends a blank line): what was held and
    everything after it pass as they came, and the marking says it overflowed; the events
    before it were stripped."""
    first = b"data: " + json.dumps(_chat("a", 0)).encode() + b"\n\n"
    long_event = b"data: " + json.dumps(_chat("x" * 2 * MAX_EVENT, 0)).encode() + b"\n\n"
    after = b"data: " + json.dumps(_chat("b", 0)).encode() + b"\n\ndata: [DONE]\n\n"
    stream = first + long_event + after
    out, overflowed = _run(stream, list(range(0, len(stream), 4096)))
    assert overflowed
    assert out.endswith(long_event + after)
    (head,) = [e for e in _BOUNDARY.split(out[: len(out) - len(long_event + after)]) if e.strip()]
    assert json.loads(head[6:])["choices"][0]["logprobs"] is None

"""Reading ``usage`` from JSON bodies and SSE streams incrementally, with bounded buffers."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from distillguard.limiting.usage import Usage, UsageParser


def _stream(deltas: int, usage: dict[str, int] | None, sep: bytes = b"\n\n") -> bytes:
    events = [
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": f"w{i}"}}]}).encode() + sep
        for i in range(deltas)
    ]
    if usage is not None:
        events.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + sep)
    events.append(b"data: [DONE]" + sep)
    return b"".join(events)


def _parse(chunks: list[bytes], **kw: int) -> Usage | None:
    parser = UsageParser(**kw)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.result()


def test_json_usage() -> None:
    """A JSON completion's top-level usage is read."""
    body = json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    )
    assert _parse([body.encode()]) == Usage(prompt=3, completion=4, total=7, source="usage")


def test_json_without_usage_and_garbage() -> None:
    """No usage, invalid JSON and non-object JSON give None (never an exception)."""
    assert _parse([b'{"choices":[]}']) is None
    assert _parse([b'{"usage": ']) is None
    assert _parse([b"[1,2]"]) is None
    assert _parse([b""]) is None


def test_large_json_keeps_only_a_bounded_tail() -> None:
    """A JSON body over the cap is not held whole; the usage at its end is still found."""
    padding = "a" * 200_000
    body = json.dumps(
        {"x": padding, "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    )
    parser = UsageParser(max_json_bytes=10_000, tail_bytes=512)
    for i in range(0, len(body), 1000):
        parser.feed(body[i : i + 1000].encode())
        assert len(parser._buffer) <= 10_000 + 1000
    assert parser.result() == Usage(prompt=1, completion=2, total=3, source="usage")


def test_sse_final_usage_chunk_wins_over_deltas() -> None:
    """A stream's usage chunk is used when present."""
    stream = _stream(4, {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})
    assert _parse([stream]) == Usage(prompt=9, completion=4, total=13, source="usage")


def test_sse_counts_deltas_without_usage() -> None:
    """Without a usage chunk, non-empty content deltas are counted (CRLF separators too)."""
    assert _parse([_stream(6, None)]) == Usage(prompt=None, completion=6, total=None, source="deltas")
    assert _parse([_stream(2, None, b"\r\n\r\n")]) == Usage(
        prompt=None, completion=2, total=None, source="deltas"
    )


def test_sse_oversized_event_is_skipped_and_counted() -> None:
    """An event longer than the cap is dropped (bounded memory) and counted as an overflow."""
    parser = UsageParser(max_event_bytes=1024)
    parser.feed(b"data: " + b"x" * 5000)
    assert len(parser._buffer) == 0 and parser.overflows == 1
    parser.feed(b"\n\n" + _stream(3, None))
    assert parser.result() == Usage(prompt=None, completion=3, total=None, source="deltas")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_sse_any_split_gives_the_same_usage(cuts: list[int]) -> None:
    """However the stream is split into chunks, the result is the same."""
    stream = _stream(5, {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _parse(chunks) == Usage(prompt=2, completion=5, total=7, source="usage")

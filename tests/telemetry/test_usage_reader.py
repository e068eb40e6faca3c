"""The span's usage reader: token counts from JSON bodies without a full parse (nested details,
quoted text, chunking, very large bodies, both naming schemes), and SSE streams."""

from __future__ import annotations

import json

import pytest

from distillguard.telemetry.usage import UsageReader
from tests.telemetry.apps import INPUT_TOKENS, OUTPUT_TOKENS, completion, sse_chunks


def read(*chunks: bytes) -> tuple[int | None, int, int | None, str] | None:
    reader = UsageReader()
    for chunk in chunks:
        reader.feed(chunk)
    usage = reader.result()
    return None if usage is None else (usage.prompt, usage.completion, usage.total, usage.source)


def test_openai_completion_with_nested_details() -> None:
    """OpenAI's ``usage`` with nested ``*_details`` objects gives the top-level counts."""
    body = completion()
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 3, "audio_tokens": 0}
    body["usage"]["completion_tokens_details"] = {"reasoning_tokens": 2}
    assert read(json.dumps(body).encode()) == (
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        INPUT_TOKENS + OUTPUT_TOKENS,
        "usage",
    )


def test_responses_api_names() -> None:
    """``input_tokens``/``output_tokens`` (Responses and Anthropic style) are read too."""
    body = {"output": [], "usage": {"input_tokens": 5, "output_tokens": 9}}
    assert read(json.dumps(body).encode()) == (5, 9, None, "usage")


def test_quoted_usage_in_the_content_is_not_read() -> None:
    """Escaped ``usage`` text inside a string never matches; the real usage object does."""
    body = completion('{"usage": {"prompt_tokens": 999, "completion_tokens": 999}}')
    encoded = json.dumps(body).encode()
    assert b'\\"usage\\"' in encoded
    assert read(encoded) == (INPUT_TOKENS, OUTPUT_TOKENS, INPUT_TOKENS + OUTPUT_TOKENS, "usage")
    body.pop("usage")
    assert read(json.dumps(body).encode()) is None


@pytest.mark.parametrize("size", [1, 7, 64])
def test_chunked_and_leading_whitespace(size: int) -> None:
    """The body split into chunks of any size, after a whitespace-only chunk, reads the same."""
    encoded = json.dumps(completion()).encode()
    chunks = [b"  \n", *(encoded[i : i + size] for i in range(0, len(encoded), size))]
    assert read(*chunks) == (INPUT_TOKENS, OUTPUT_TOKENS, INPUT_TOKENS + OUTPUT_TOKENS, "usage")


def test_very_large_body_keeps_the_tail() -> None:
    """Past 1 MiB only the tail is kept, and the trailing ``usage`` is still found."""
    body = completion("x" * (3 << 20))
    encoded = json.dumps(body).encode()
    chunks = [encoded[i : i + 65536] for i in range(0, len(encoded), 65536)]
    reader = UsageReader()
    for chunk in chunks:
        reader.feed(chunk)
    assert sum(len(c) for c in reader._chunks) <= (1 << 20) + 65536 + 1
    usage = reader.result()
    assert usage is not None and (usage.prompt, usage.completion) == (INPUT_TOKENS, OUTPUT_TOKENS)


def test_sse_stream_goes_to_the_event_parser() -> None:
    """An SSE stream's final ``usage`` chunk is read; no usage and no body give ``None``."""
    assert read(*sse_chunks()) == (INPUT_TOKENS, OUTPUT_TOKENS, INPUT_TOKENS + OUTPUT_TOKENS, "usage")
    assert read(b"") is None
    assert read(b"not json, not sse") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"usage":{"prompt_tokens":1e5,"completion_tokens":12.7}}', None),  # not whole integers
        (b'{"usage":{"prompt_tokens":99999999999999999999999,"completion_tokens":3}}', (None, 3)),
        (b'{"usage":{"prompt_tokens":12,"completion_tokens":3}}', (12, 3)),
        (b'{"usage": {"prompt_tokens" : 7 }}', (7, 0)),
    ],
)
def test_only_whole_token_counts_a_span_can_carry_are_read(
    body: bytes, expected: tuple[int | None, int] | None
) -> None:
    """``1e5`` is not read as 1 nor ``12.7`` as 12, and a count of 2**63 or more (which the OTLP
    encoder would drop with an error on every span) is left out."""
    reader = UsageReader()
    reader.feed(body)
    usage = reader.result()
    assert (None if usage is None else (usage.prompt, usage.completion)) == expected

"""Reading the token ``usage`` of a model response as it streams past, with bounded memory.

Two shapes are recognised from the first bytes of the body (no header needed):

* a JSON document (``{...}``): its top-level ``usage`` object. Bodies up to ``max_json_bytes``
  are parsed whole; beyond that only the last ``tail_bytes`` are kept and the last
  ``"usage": {...}`` object in them is read.
* a Server-Sent Events stream (``data: ...``): each event's JSON. The last event with a
  ``usage`` object wins (OpenAI sends it in a final chunk when asked with
  ``stream_options.include_usage``); otherwise the non-empty content deltas of every choice are
  counted, one token each (servers stream about one token per delta; none counted means none
  produced). A partial event is held
  up to ``max_event_bytes``; a longer event is skipped (and counted in :attr:`overflows`).

The parser never raises and never alters the body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Usage", "UsageParser"]

_USAGE_TAIL = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens a response used.

    Attributes:
        prompt: prompt (input) tokens, when reported.
        completion: completion (output) tokens (reported, or counted deltas).
        total: the total, when reported.
        source: ``"usage"`` (the response said so) or ``"deltas"`` (counted from the stream).
    """

    prompt: int | None
    completion: int
    total: int | None
    source: str


def _int(value: object) -> int | None:
    """A token count: a non-negative integer under 2**63 (what a span attribute can carry)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT:
        return value
    return None


_MAX_COUNT = 1 << 63


def _usage(obj: object) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    prompt = _int(obj.get("prompt_tokens", obj.get("input_tokens")))
    completion = _int(obj.get("completion_tokens", obj.get("output_tokens")))
    total = _int(obj.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    return Usage(prompt=prompt, completion=completion or 0, total=total, source="usage")


class UsageParser:
    """Feed it the response body chunk by chunk; read :meth:`result` at the end.

    Args:
        max_json_bytes: JSON bodies up to this size are parsed whole.
        tail_bytes: how much of a longer JSON body is kept to find ``usage``.
        max_event_bytes: the longest SSE event held while incomplete.
    """

    __slots__ = (
        "_buffer",
        "_deltas",
        "_kind",
        "_size",
        "_usage",
        "max_event_bytes",
        "max_json_bytes",
        "overflows",
        "tail_bytes",
    )

    def __init__(
        self, *, max_json_bytes: int = 1 << 20, tail_bytes: int = 4096, max_event_bytes: int = 1 << 16
    ) -> None:
        self.max_json_bytes = max_json_bytes
        self.tail_bytes = tail_bytes
        self.max_event_bytes = max_event_bytes
        self._kind: str | None = None
        self._buffer = bytearray()
        self._size = 0
        self._usage: Usage | None = None
        self._deltas = 0
        self.overflows = 0

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of the body."""
        if not chunk:
            return
        if self._kind is None:
            head = chunk.lstrip()
            if not head:
                return
            self._kind = "json" if head[:1] in (b"{", b"[") else "sse"
        if self._kind == "json":
            self._feed_json(chunk)
        else:
            self._feed_sse(chunk)

    def _feed_json(self, chunk: bytes) -> None:
        self._size += len(chunk)
        self._buffer += chunk
        if self._size > self.max_json_bytes and len(self._buffer) > self.tail_bytes:
            del self._buffer[: len(self._buffer) - self.tail_bytes]

    def _feed_sse(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        while True:
            end, sep = _event_end(buffer)
            if end < 0:
                break
            event = bytes(buffer[:end])
            del buffer[: end + sep]
            self._event(event)
        if len(buffer) > self.max_event_bytes:
            self.overflows += 1
            buffer.clear()

    def _event(self, event: bytes) -> None:
        lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
        if not lines:
            return
        data = b"\n".join(lines).strip()
        if not data or data == b"[DONE]":
            return
        try:
            obj: Any = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(obj, dict):
            return
        usage = _usage(obj.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if isinstance(text, str) and text:
                    self._deltas += 1

    def result(self) -> Usage | None:
        """The usage seen so far (call once the body is complete), or ``None``."""
        if self._kind == "sse":
            if self._buffer.strip():
                self._event(bytes(self._buffer))
                self._buffer.clear()
            if self._usage is not None:
                return self._usage
            # a stream without usage and without content produced no completion tokens
            return Usage(prompt=None, completion=self._deltas, total=None, source="deltas")
        if self._kind == "json":
            if self._size <= self.max_json_bytes:
                try:
                    obj = json.loads(bytes(self._buffer))
                except (ValueError, RecursionError):
                    return None
                return _usage(obj.get("usage")) if isinstance(obj, dict) else None
            found = _USAGE_TAIL.findall(bytes(self._buffer))
            if found:
                try:
                    return _usage(json.loads(found[-1]))
                except ValueError:
                    return None
        return None


def _event_end(buffer: bytearray) -> tuple[int, int]:
    """Index and length of the first blank-line separator in ``buffer`` (``-1`` if none)."""
    best, size = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buffer.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, size = i, len(sep)
    return best, size

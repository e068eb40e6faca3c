"""Reading a response's token ``usage`` for the span, as cheaply as possible.

JSON bodies are not parsed: the token counts are read with one regular expression from the last
``"usage"`` key on (a JSON string cannot contain ``"usage"`` unescaped, so text quoting it does
not match). That takes about half the time of ``json.loads`` on a small completion, and the body
chunks are kept by reference, not copied. Server-Sent Events streams go to
:class:`~distillguard.limiting.usage.UsageParser`, which follows events (the last ``usage`` wins,
else content deltas are counted).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..limiting.usage import Usage, UsageParser
from .attributes import OPERATIONS

if TYPE_CHECKING:
    from ..decision import Decision

__all__ = ["UsageReader", "reader_for", "usage_of"]

_KEYS = re.compile(  # a whole integer (not the 1 of 1e5 or the 12 of 12.7), under 2**63
    rb'"(prompt_tokens|input_tokens|completion_tokens|output_tokens|total_tokens)"\s*:\s*(\d{1,18})(?=\s*[,}\]])'
)
_MAX_JSON = 1 << 20  # bodies up to this size are kept whole
_TAIL = 1 << 16  # beyond it, only the tail is kept (``usage`` comes last in practice)


class UsageReader:
    """Feed it the response body chunk by chunk; read :meth:`result` at the end."""

    __slots__ = ("_chunks", "_size", "_stream")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._stream: UsageParser | None = None

    def feed(self, chunk: bytes) -> None:
        """Look at the next chunk of the body (kept by reference)."""
        if not chunk:
            return
        stream = self._stream
        if stream is not None:
            stream.feed(chunk)
            return
        if not self._chunks:
            head = chunk[:64].lstrip()[:1] or chunk.lstrip()[:1]  # no copy of a large chunk
            if not head:
                return
            if head != b"{":
                self._stream = stream = UsageParser()
                stream.feed(chunk)
                return
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > _MAX_JSON:
            tail = b"".join(self._chunks)[-_TAIL:]
            self._chunks = [b"{", tail]  # still "started"
            self._size = len(tail) + 1

    def result(self) -> Usage | None:
        """The usage the response reported (or, for a stream, counted), or ``None``."""
        if self._stream is not None:
            usage = self._stream.result()
            if usage is not None and usage.source != "usage" and not usage.completion:
                return None  # nothing reported and nothing counted: not a model stream
            return usage
        chunks = self._chunks
        if not chunks:
            return None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        start = body.rfind(b'"usage"')
        if start < 0:
            return None
        found: dict[bytes, int] = {}
        for match in _KEYS.finditer(body, start):
            found.setdefault(match.group(1), int(match.group(2)))
        prompt = found.get(b"prompt_tokens", found.get(b"input_tokens"))
        completion = found.get(b"completion_tokens", found.get(b"output_tokens"))
        total = found.get(b"total_tokens")
        if prompt is None and completion is None:
            return None
        return Usage(prompt=prompt, completion=completion or 0, total=total, source="usage")


def reader_for(decision: Decision) -> UsageReader | None:
    """A reader for the response to ``decision``: only for GenAI requests passed to the app,
    and only when no token limit reads the usage already (its reading is reused)."""
    query = decision.query
    if query is None or query.kind not in OPERATIONS or decision.problem is not None:
        return None
    budget = getattr(decision, "budget", None)
    if budget is not None and budget.parser is not None:
        return None
    return UsageReader()


def usage_of(reader: UsageReader | None, decision: Decision | None) -> Usage | None:
    """The response's token usage, from ``reader`` or the token limits' own reading."""
    if reader is not None:
        return reader.result()
    budget = getattr(decision, "budget", None)
    if budget is None or budget.parser is None:
        return None
    usage: Usage | None = budget.usage if budget.usage is not None else budget.parser.result()
    return usage

"""Watermarking the answers of OpenAI-style endpoints as they pass through, and stripping the
log probabilities of a degraded answer (sans-IO: bytes in, bytes out; the adapters feed it).

A successful ``application/json`` answer is buffered whole and the text of each choice
(``choices[].message.content``, ``choices[].text``) is marked. A ``text/event-stream`` answer is
marked event by event (``choices[].delta.content``, ``choices[].text``) with one
:class:`~distillguard.watermark.StreamMarker` per choice; a word cut between two events is held
back and sent with the next event of its choice (at the latest with the choice's finish event,
or in an event of its own before ``[DONE]``). With ``strip``, each choice's ``logprobs``
(chat and completion answers, whole or streamed) becomes ``null``, as if they had not been
asked for: the request's own fields were removed already (``Policy.degrade_fields``), and this
holds when the model server sends them anyway. Anything else (other content types, error
statuses, bodies that are not JSON, events that are not JSON) passes unchanged. The adapters
drop ``Content-Length`` from a rewritten answer: its length changes.

Held bytes are bounded: a JSON answer longer than :data:`MAX_DOCUMENT` bytes, or an event
longer than :data:`MAX_EVENT` bytes (a stream that never sends a blank line), stops the
marking; what was held is sent unchanged (after an event carrying any word held back) and the
rest of the answer passes as it comes (:attr:`ResponseMarking.overflowed` says so). Events are
found in linear time whatever the chunking, with any of the line endings the SSE format allows
(``\n``, ``\r\n``, ``\r``).

A compressed answer is read through its ``Content-Encoding`` when the standard library can
decode it (``gzip``, ``x-gzip``, ``deflate``, zlib-wrapped or raw): the answer is then sent
uncompressed (:attr:`ResponseMarking.decodes`: the adapters drop ``Content-Encoding`` too). An
answer in another encoding (``br``, ``zstd``) cannot be read and passes unchanged; the adapters
ask the app for an uncompressed answer whenever one may be rewritten, so this only happens
when the app compresses against the request's ``Accept-Encoding: identity``.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from .watermark import StreamMarker, Watermark

__all__ = ["MAX_DOCUMENT", "MAX_EVENT", "ResponseMarking", "readable"]

MAX_DOCUMENT = 4 * 1024 * 1024
"""The longest JSON answer that is marked (bytes); a longer one passes unchanged."""
MAX_EVENT = 256 * 1024
"""The longest server-sent event that is marked (bytes); past it the stream passes unchanged."""

_BOUNDARY = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")
_LINES = re.compile(rb"(\r\n|\r|\n)")
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DECODED = {"gzip": 47, "x-gzip": 47, "deflate": 15}  # zlib's wbits: 47 = gzip or zlib header


def readable(encoding: str) -> bool:
    """Whether an answer with this ``Content-Encoding`` can be read (and so rewritten)."""
    coding = encoding.strip().lower()
    return coding in ("", "identity") or coding in _DECODED


class _Decoder:
    """Incremental decoding of a ``gzip`` or ``deflate`` body (several gzip members included;
    ``deflate`` with or without its zlib wrapper). A damaged stream stops the decoding: what
    comes after passes as it came."""

    __slots__ = ("_raw", "_wbits", "_zlib", "failed")

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._zlib = zlib.decompressobj(wbits)
        self._raw = wbits == 15  # ``deflate``: raw deflate is tried once the wrapper fails
        self.failed = False

    def feed(self, data: bytes) -> bytes:
        if self.failed:
            return data
        out: list[bytes] = []
        while data:
            try:
                out.append(self._zlib.decompress(data))
            except zlib.error:
                if self._raw:  # no zlib header: a raw deflate stream
                    self._raw = False
                    self._zlib = zlib.decompressobj(-15)
                    continue
                self.failed = True
                out.append(data)
                break
            self._raw = False
            data = self._zlib.unused_data
            if data and self._zlib.eof:  # the next gzip member
                self._zlib = zlib.decompressobj(self._wbits)
            else:
                break
        return b"".join(out)

    def end(self) -> bytes:
        return b"" if self.failed else self._zlib.flush()


class ResponseMarking:
    """Marks one answer (see the module docstring)."""

    __slots__ = (
        "_before",
        "_buffer",
        "_decoder",
        "_deltas",
        "_field",
        "_last",
        "_markers",
        "_mode",
        "_parts",
        "_strip",
        "_watermark",
        "overflowed",
    )

    def __init__(self, watermark: Watermark | None, strip: bool = False) -> None:
        self._watermark = watermark
        self._strip = strip
        self._mode = ""
        self._buffer = b""
        self._markers: dict[int, StreamMarker] = {}
        self._last: dict[str, Any] | None = None  # the last chunk: the envelope of a flush event
        self._field = "content"  # chat chunks carry ``delta.content``, completion chunks ``text``
        self._decoder: _Decoder | None = None  # a compressed answer's decoding
        self._parts: dict[tuple[Any, Any], StreamMarker] = {}  # Responses: a marker per text part
        self._deltas: dict[tuple[Any, Any], dict[str, Any]] = {}  # and its last delta
        self._before = b""  # Responses: an event to send ahead of the current one
        self.overflowed = False  # an answer or an event was too long to hold: passed unchanged

    def start(self, status: int, content_type: str, encoding: str = "") -> bool:
        """Whether this answer is marked (then drop its ``Content-Length``, and its
        ``Content-Encoding`` when :attr:`decodes`). ``encoding``: its ``Content-Encoding``."""
        kind = content_type.split(";", 1)[0].strip().lower()
        if not readable(encoding):
            return False
        if 200 <= status < 300 and kind in ("application/json", "text/event-stream"):
            self._mode = "json" if kind == "application/json" else "sse"
            wbits = _DECODED.get(encoding.strip().lower())
            self._decoder = None if wbits is None else _Decoder(wbits)
        return bool(self._mode)

    @property
    def decodes(self) -> bool:
        """Whether the answer is decompressed (sent without its ``Content-Encoding``)."""
        return self._decoder is not None

    def feed(self, chunk: bytes) -> bytes:
        """The marked bytes that can be sent now."""
        if self._decoder is not None:
            chunk = self._decoder.feed(chunk)
        return self._marked(chunk)

    def _marked(self, chunk: bytes) -> bytes:
        mode = self._mode
        if mode == "json":
            self._buffer += chunk
            if len(self._buffer) > MAX_DOCUMENT:
                return self._overflow(b"")
            return b""
        if mode != "sse":
            return chunk
        held = self._buffer
        out = b""
        # a blank line can only end in this chunk: look there (and at the 3 bytes before it)
        if _BOUNDARY.search(held[-3:] + chunk) is None:
            self._buffer = held + chunk
        else:  # complete events, each followed by its blank line, then the start of the next
            parts = _BOUNDARY.split(held + chunk)  # event, separator, ..., the rest
            self._buffer = parts[-1]
            out = b"".join(self._event(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2))
        if len(self._buffer) > MAX_EVENT:
            return out + self._overflow(self._flush_event())
        return out

    def _overflow(self, first: bytes) -> bytes:
        """Stop marking: ``first``, then what is held, unchanged; the rest passes as it comes."""
        held, self._buffer = self._buffer, b""
        self._mode = ""
        self.overflowed = True
        return first + held

    def end(self) -> bytes:
        """The rest, at the end of the answer."""
        out = b""
        if self._decoder is not None:
            out = self._marked(self._decoder.end())
        return out + self._rest()

    def _rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        if self._mode == "json":
            return self._document(rest)
        if self._mode == "sse":
            tail = self._event(rest, b"") if rest.strip() else rest
            flushed = self._flush_event()
            return tail + (b"\n\n" if flushed and tail.strip() else b"") + flushed
        return rest

    def _document(self, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            return body
        if isinstance(doc, dict) and isinstance(doc.get("output"), list):  # the Responses API
            return json.dumps(doc, ensure_ascii=False).encode() if self._response(doc) else body
        if isinstance(doc, dict) and doc.get("type") == "message":  # Anthropic's Messages API
            return json.dumps(doc, ensure_ascii=False).encode() if self._blocks(doc) else body
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            return body
        changed = False
        for choice in doc["choices"]:
            if isinstance(choice, dict):
                changed |= self._stripped(choice)
                message = choice.get("message")
                if isinstance(message, dict):
                    changed |= self._mark_in(message, "content")
                changed |= self._mark_in(choice, "text")
        return json.dumps(doc, ensure_ascii=False).encode() if changed else body

    def _stripped(self, choice: dict[str, Any]) -> bool:
        """With ``strip``, set ``choice["logprobs"]`` to ``None``; whether it changed."""
        if not self._strip or choice.get("logprobs") is None:
            return False
        choice["logprobs"] = None
        return True

    def _mark_in(self, holder: dict[str, Any], key: str) -> bool:
        """Mark ``holder[key]`` in place when it is text; whether it changed."""
        value = holder.get(key)
        if not isinstance(value, str) or self._watermark is None:
            return False
        holder[key] = marked = self._watermark.mark(value)
        return marked != value

    def _event(self, event: bytes, end: bytes = b"\n\n") -> bytes:
        """One event (without its blank line), marked, followed by ``end``."""
        lines = _LINES.split(event)  # line, ending, line, ending, ..., line
        for i in range(0, len(lines), 2):
            line = lines[i]
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return self._flush_event(end) + event + end
            if not payload.startswith(b"{"):
                continue
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if self._chunk(doc):
                lines[i] = b"data: " + _encode(doc).encode()
        before, self._before = self._before, b""
        return before + b"".join(lines) + end

    # -- the Responses API ---------------------------------------------------------------------

    def _part(self, part: Any) -> bool:
        """Mark (and strip) one ``output_text`` content part in place; whether it changed."""
        if not isinstance(part, dict) or part.get("type") != "output_text":
            return False
        changed = self._mark_in(part, "text")
        if self._strip and part.get("logprobs"):
            part["logprobs"] = []
            changed = True
        return changed

    def _item(self, item: Any) -> bool:
        """Mark the text parts of one output item (a ``message``) in place."""
        if not isinstance(item, dict) or not isinstance(item.get("content"), list):
            return False
        changed = False
        for part in item["content"]:
            changed |= self._part(part)
        return changed

    def _response(self, doc: dict[str, Any]) -> bool:
        """Mark a Responses API ``response`` object's output in place."""
        changed = False
        for item in doc["output"]:
            changed |= self._item(item)
        return changed

    def _response_event(self, doc: dict[str, Any], kind: str) -> bool:
        """Mark one Responses API stream event in place. A ``response.output_text.delta``
        goes through the stream marker of its ``(output_index, content_index)``; the words it
        still holds go out in a delta event of their own (``self._before``) ahead of that
        part's ``response.output_text.done``, whose full ``text`` is marked whole, as are the
        parts, items and responses of the later events."""
        key = (doc.get("output_index"), doc.get("content_index"))
        if kind == "response.output_text.delta":
            changed = False
            if self._strip and doc.get("logprobs"):
                doc["logprobs"] = []
                changed = True
            piece = doc.get("delta")
            if self._watermark is None or not isinstance(piece, str):
                return changed
            doc["delta"] = marked = self._fed(key, doc, piece, self._watermark)
            return changed or marked != piece
        if kind == "response.output_text.done":
            self._before += self._held_delta(key)
            changed = self._mark_in(doc, "text")
            if self._strip and doc.get("logprobs"):
                doc["logprobs"] = []
                changed = True
            return changed
        if kind == "response.content_part.done":
            return self._part(doc.get("part"))
        if kind == "response.output_item.done":
            return self._item(doc.get("item"))
        response = doc.get("response")
        if isinstance(response, dict) and isinstance(response.get("output"), list):
            return self._response(response)
        return False

    # -- Anthropic's Messages API --------------------------------------------------------------

    def _blocks(self, doc: dict[str, Any]) -> bool:
        """Mark the ``text`` content blocks of a ``message`` in place."""
        changed = False
        for block in doc.get("content") or ():
            if isinstance(block, dict) and block.get("type") == "text":
                changed |= self._mark_in(block, "text")
        return changed

    def _message_event(self, doc: dict[str, Any], kind: str) -> bool:
        """Mark one Messages API stream event in place: a ``content_block_delta`` of type
        ``text_delta`` goes through the stream marker of its block; the words it still holds
        go out in a delta of their own ahead of the block's ``content_block_stop``."""
        if self._watermark is None:
            return False
        key = ("block", doc.get("index"))
        if kind == "content_block_stop":
            self._before += self._held_delta(key)
            return False
        delta = doc.get("delta")
        if not isinstance(delta, dict) or delta.get("type") != "text_delta":
            return False
        piece = delta.get("text")
        if not isinstance(piece, str):
            return False
        delta["text"] = marked = self._fed(key, doc, piece, self._watermark)
        return marked != piece

    def _fed(self, key: tuple[Any, Any], doc: dict[str, Any], piece: str, watermark: Watermark) -> str:
        """``piece`` of the text part ``key`` (whose event is ``doc``), through its marker."""
        marker = self._parts.get(key)
        if marker is None:
            marker = self._parts[key] = StreamMarker(watermark)
        self._deltas[key] = doc
        return marker.feed(piece)

    def _held_delta(self, key: tuple[Any, Any]) -> bytes:
        """A delta event carrying the words the marker of ``key`` still holds (or nothing), in
        the format of the stream it belongs to."""
        marker = self._parts.pop(key, None)
        last = self._deltas.pop(key, None)
        if marker is None or not marker.held or last is None:
            return b""
        if key[0] == "block":  # Anthropic's Messages API
            text = {"type": "text_delta", "text": marker.flush()}
            doc = {"type": "content_block_delta", "index": key[1], "delta": text}
            return b"event: content_block_delta\ndata: " + _encode(doc).encode() + b"\n\n"
        doc = {**last, "delta": marker.flush(), "logprobs": []}
        return b"event: response.output_text.delta\ndata: " + _encode(doc).encode() + b"\n\n"

    def _chunk(self, doc: Any) -> bool:
        """Mark one streamed chunk in place; whether it changed."""
        kind = doc.get("type") if isinstance(doc, dict) else None
        if isinstance(kind, str):
            if kind.startswith("response."):  # OpenAI's Responses API
                return self._response_event(doc, kind)
            if kind in ("content_block_delta", "content_block_stop"):  # Anthropic's Messages API
                return self._message_event(doc, kind)
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            return False
        self._last = doc
        changed = False
        watermark = self._watermark
        for choice in doc["choices"]:
            if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
                continue
            changed |= self._stripped(choice)
            if watermark is None:
                continue
            index = choice.get("index", 0)
            marker = self._markers.get(index)
            if marker is None:
                marker = self._markers[index] = StreamMarker(watermark)
            finished = choice.get("finish_reason") is not None
            delta = choice.get("delta")
            field, holder = ("content", delta) if isinstance(delta, dict) else ("text", choice)
            self._field = field
            piece = holder.get(field)
            if not isinstance(piece, str) and not (finished and marker.held):
                continue
            marked = marker.feed(piece if isinstance(piece, str) else "")
            if finished:
                marked += marker.flush()
            if marked != piece and (isinstance(piece, str) or marked):
                holder[field] = marked
                changed = True
        return changed

    def _flush_event(self, end: bytes = b"\n\n") -> bytes:
        """An event carrying the words still held back (none: nothing)."""
        if self._parts:  # a Responses stream that ended without its parts' done events
            return b"".join(self._held_delta(key) for key in list(self._parts))
        held = {index: marker.flush() for index, marker in self._markers.items() if marker.held}
        if not held or self._last is None:
            return b""
        choices: list[dict[str, Any]] = []
        for index, text in held.items():
            piece: dict[str, Any] = {"text": text} if self._field == "text" else {"delta": {"content": text}}
            choices.append({"index": index, **piece, "finish_reason": None})
        doc = {**{k: v for k, v in self._last.items() if k != "usage"}, "choices": choices}  # counted once
        return b"data: " + _encode(doc).encode() + end

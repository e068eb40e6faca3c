"""Reading a request log: one JSON object per line.

Each line holds ``ts`` (unix seconds), ``client`` (the identity), ``path`` and ``body`` (the
request's JSON); ``method`` (``POST`` by default) and ``headers`` (a mapping) are optional, and
so are ``ip`` (the peer address) and ``tenant``. Lines that cannot be used are counted by
:class:`LogStats`, never fatal: malformed lines are skipped, lines whose path is not a model
route are skipped, lines longer than the size cap are skipped unparsed, and lines out of time
order are replayed on a clock that never goes back.

:func:`open_log` opens a file or standard input the same way for every command: bytes split at
``\\n`` only (a raw ``\\r`` is JSON whitespace, a trailing one is dropped), decoded as UTF-8 with
bad bytes replaced, a leading byte-order mark ignored, gzip recognised by its magic bytes, and
lines over the cap skipped without being held in memory whole.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .._text import is_text
from ..decision import Action
from ..query import finite_float

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_ROUTES",
    "LogRecord",
    "LogStats",
    "Oversized",
    "RouteMatcher",
    "open_log",
    "read_lines",
    "read_log",
]

DEFAULT_ROUTES: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/predict",
    "/v1/predict",
    "/invocations",
    "/v1/models/",
    "/api/",
)
"""Model routes replayed by default: exact paths, or prefixes when ending in ``/``."""

_KEEP_FIRST = 10

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""Lines longer than this (16 MiB) are counted as ``oversized`` and skipped."""

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_DRAIN = 1 << 20  # bytes read at a time while skipping the rest of an oversized line


@dataclass(frozen=True, slots=True)
class Oversized:
    """Stands for a line longer than the cap, skipped without decoding it.

    Attributes:
        size: the line's length in bytes (without its line end).
    """

    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRecord:
    """One usable log line.

    Attributes:
        line: the 1-based line number in the file.
        ts: the logged timestamp (unix seconds).
        clock: the replay clock for this line: ``ts``, or the latest earlier timestamp when the
            line is out of time order.
        client: the client identity.
        path: the request path.
        method: the HTTP method.
        body: the request body, re-encoded as JSON bytes.
        headers: header names (lower case) to values.
        ip: the peer address, if logged.
        tenant: the tenant, if logged.
        decision: what the guard decided online, if logged (``RequestLog`` writes it).
    """

    line: int
    ts: float
    clock: float
    client: str
    path: str
    method: str
    body: bytes
    headers: Mapping[str, str]
    ip: str | None = None
    tenant: str | None = None
    decision: str | None = None


@dataclass(slots=True)
class Counted:
    """How many lines fell in one category, and the first few line numbers."""

    count: int = 0
    first_lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        """Count ``line``."""
        self.count += 1
        if len(self.first_lines) < _KEEP_FIRST:
            self.first_lines.append(line)

    def as_dict(self) -> dict[str, Any]:
        """``{"count": n, "first_lines": [...]}``."""
        return {"count": self.count, "first_lines": list(self.first_lines)}


@dataclass(slots=True)
class LogStats:
    """What reading the log found, filled in while :func:`read_log` iterates."""

    lines: int = 0
    replayed: int = 0
    malformed: Counted = field(default_factory=Counted)
    out_of_order: Counted = field(default_factory=Counted)
    unknown_path: Counted = field(default_factory=Counted)
    oversized: Counted = field(default_factory=Counted)
    unparsed_bodies: Counted = field(default_factory=Counted)
    first_ts: float | None = None
    last_ts: float | None = None


class RouteMatcher:
    """Whether a path is a model route: exact match, or prefix match for entries ending in ``/``.
    An empty route list accepts every path."""

    def __init__(self, routes: Iterable[str]) -> None:
        routes = tuple(routes)
        self._all = not routes
        self._exact = frozenset(r for r in routes if not r.endswith("/"))
        self._prefixes = tuple(r for r in routes if r.endswith("/"))

    def __call__(self, path: str) -> bool:
        """Whether ``path`` is replayed."""
        if self._all or path in self._exact:
            return True
        return bool(self._prefixes) and path.startswith(self._prefixes)


def _headers(value: object) -> Mapping[str, str] | None:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return None
    return {str(k).lower(): str(v) for k, v in value.items()}


def _body(value: object) -> tuple[bytes, bool] | None:
    """The request body as bytes and whether it is JSON, or ``None`` when it cannot be encoded.

    A string is the request's text as logged (some servers log the raw body): the JSON text of
    an object or array is replayed as that JSON; any other string is replayed as a raw,
    non-JSON body, which the caller reports rather than replaying it silently as nothing."""
    if isinstance(value, str):
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if value.lstrip()[:1] in ("{", "["):
            try:
                json.loads(value)
            except (ValueError, RecursionError):
                return encoded, False
            return encoded, True
        return encoded, False
    try:
        encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # lone surrogates; or too deep to re-encode
        return None
    return encoded, True


_DECISIONS = frozenset(a.value for a in Action)  # what a RequestLog line's ``decision`` may say


def _parse(line_no: int, text: str) -> tuple[LogRecord, bool] | None:
    """The record of one line and whether its body is JSON, or ``None`` when it is malformed."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    ts = finite_float(obj.get("ts"))  # a JSON integer may be too large for a float
    client = obj.get("client")
    path = obj.get("path")
    if ts is None:
        return None
    if not isinstance(client, str) or not client or not is_text(client):
        return None
    if not isinstance(path, str) or not path.startswith("/") or not is_text(path):
        return None
    if "body" not in obj:
        return None
    method = obj.get("method", "POST")
    headers = _headers(obj.get("headers"))
    if not isinstance(method, str) or headers is None:
        return None
    ip = obj.get("ip")
    tenant = obj.get("tenant")
    decision = obj.get("decision")
    body = _body(obj["body"])
    if body is None:
        return None
    encoded, is_json = body
    record = LogRecord(
        line=line_no,
        ts=ts,
        clock=ts,
        client=client,
        path=path.split("?", 1)[0],
        method=method.upper(),
        body=encoded,
        headers=headers,
        ip=ip if isinstance(ip, str) and is_text(ip) else None,
        tenant=tenant if isinstance(tenant, str) and is_text(tenant) else None,
        decision=decision if isinstance(decision, str) and decision in _DECISIONS else None,
    )
    return record, is_json


def _size(text: str, cap: int) -> int:
    """The UTF-8 length of ``text`` when it may exceed ``cap``, else a cheap lower bound."""
    if 4 * len(text) <= cap:  # no character takes more than four bytes
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def read_log(
    lines: Iterable[str | Oversized],
    stats: LogStats,
    routes: RouteMatcher | None = None,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    progress: Callable[[int], None] | None = None,
    progress_every: int = 100_000,
) -> Iterator[LogRecord]:
    """Yield the usable records of ``lines``, counting the rest in ``stats``.

    ``lines`` are text lines (from :func:`read_lines`, a file opened as text, or a list); a
    trailing line end is dropped. Blank lines are ignored; lines over ``max_line_bytes`` (or an
    :class:`Oversized` from :func:`read_lines`) are counted as ``oversized`` and not parsed. A
    record earlier than one already read gets ``clock`` = the latest timestamp so far, so the
    replayed clock never goes back. ``progress`` is called with the line number every
    ``progress_every`` lines read, whatever became of them (after the caller has handled a
    yielded record)."""
    accept = routes or RouteMatcher(DEFAULT_ROUTES)
    latest = -math.inf
    every = max(1, progress_every)
    next_report = every
    line_no = 0
    for line_no, text in enumerate(lines, start=1):
        stats.lines = line_no
        record = None
        if isinstance(text, Oversized):
            stats.oversized.add(line_no)
        else:
            if text.endswith("\n"):
                text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
            if _size(text, max_line_bytes) > max_line_bytes:
                stats.oversized.add(line_no)
            elif text.strip():
                record, latest = _accept(line_no, text, stats, accept, latest)
        if record is not None:
            yield record
        if progress is not None and line_no >= next_report:
            next_report = line_no + every
            progress(line_no)
    stats.lines = line_no


def _accept(
    line_no: int, text: str, stats: LogStats, accept: RouteMatcher, latest: float
) -> tuple[LogRecord | None, float]:
    """The record of one non-blank line (or ``None``, counted in ``stats``) and the latest
    timestamp so far."""
    parsed = _parse(line_no, text)
    if parsed is None:
        stats.malformed.add(line_no)
        return None, latest
    record, is_json = parsed
    if not accept(record.path):
        stats.unknown_path.add(line_no)
        return None, latest
    if not is_json:
        stats.unparsed_bodies.add(line_no)
    ts = record.ts
    if ts < latest:
        stats.out_of_order.add(line_no)
        record = LogRecord(
            line=record.line,
            ts=ts,
            clock=latest,
            client=record.client,
            path=record.path,
            method=record.method,
            body=record.body,
            headers=record.headers,
            ip=record.ip,
            tenant=record.tenant,
        )
    else:
        latest = ts
    if stats.first_ts is None or ts < stats.first_ts:
        stats.first_ts = ts
    if stats.last_ts is None or ts > stats.last_ts:
        stats.last_ts = ts
    stats.replayed += 1
    return record, latest


def read_lines(
    stream: IO[bytes] | io.BufferedIOBase, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[str | Oversized]:
    """The lines of a binary stream as text: split at ``\\n`` only, a trailing ``\\r``
    dropped, decoded as UTF-8 with bad bytes replaced, a leading byte-order mark dropped. A line
    longer than ``max_line_bytes`` is read past in bounded chunks and yields :class:`Oversized`.

    Raises:
        OSError: when compressed input is truncated or corrupt.
    """
    limit = max_line_bytes + 1
    first = True
    try:
        while True:
            raw = stream.readline(limit)
            if not raw:
                return
            complete = raw.endswith(b"\n") or len(raw) < limit
            if first:
                first = False
                if raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
            if not complete:
                yield Oversized(len(raw) + _skip_line(stream))
                continue
            if raw.endswith(b"\n"):
                raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            yield raw.decode("utf-8", "replace")
    except (EOFError, zlib.error) as exc:  # a truncated or damaged gzip stream
        raise OSError(f"corrupt compressed input: {exc}") from exc


def _skip_line(stream: IO[bytes] | io.BufferedIOBase) -> int:
    """Read past the rest of the current line; return how many bytes it held (without ``\\n``)."""
    size = 0
    while True:
        chunk = stream.readline(_DRAIN)
        if not chunk:
            return size
        if chunk.endswith(b"\n"):
            return size + len(chunk) - 1
        size += len(chunk)


def _peekable(stream: IO[bytes]) -> io.BufferedReader:
    if isinstance(stream, io.BufferedReader):
        return stream
    return io.BufferedReader(cast("io.RawIOBase", stream))


def _decompressed(stream: io.BufferedReader) -> io.BufferedIOBase:
    """``stream``, or its gzip decompression when it starts with gzip's magic bytes."""
    if stream.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return stream


@contextmanager
def open_log(
    path: str | Sequence[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Iterator[str | Oversized]]:
    """The lines of the log at ``path`` (``-`` is standard input), read by :func:`read_lines`;
    gzip input (recognised by its magic bytes, whatever the file name) is decompressed. Several
    paths (the files of several workers, say) are read one after the other, as one log: line
    numbers count on across them, and their lines out of time order are handled as such.

    Raises:
        OSError: when a log cannot be opened or read (every file is opened once first, so a
            missing one fails here, not after the others were read).
    """
    paths = [path] if isinstance(path, str) else list(path)
    if paths == ["-"]:
        yield read_lines(_decompressed(_peekable(sys.stdin.buffer)), max_line_bytes)
        return
    if "-" in paths or not paths:
        raise OSError("standard input (-) is read alone, not with files")
    for each in paths:
        with open(each, "rb"):
            pass
    if len(paths) == 1:
        with open(paths[0], "rb") as handle, _decompressed(handle) as stream:
            yield read_lines(stream, max_line_bytes)
        return
    yield _chained(paths, max_line_bytes)


def _chained(paths: Sequence[str], max_line_bytes: int) -> Iterator[str | Oversized]:
    """The lines of each file of ``paths`` in turn (each opened when its turn comes)."""
    for each in paths:
        with open(each, "rb") as handle, _decompressed(handle) as stream:
            yield from read_lines(stream, max_line_bytes)

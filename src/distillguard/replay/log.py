"""Reading a request log: one JSON object per line.

Each line holds ``ts`` (unix seconds), ``client`` (the identity), ``path`` and ``body`` (the
request's JSON); ``method`` (``POST`` by default) and ``headers`` (a mapping) are optional, and
so are ``ip`` (the peer address) and ``tenant``. Lines that cannot be used are counted by
:class:`LogStats`, never fatal: malformed lines are skipped, lines whose path is not a model
route are skipped, and lines out of time order are replayed on a clock that never goes back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_ROUTES", "LogRecord", "LogStats", "RouteMatcher", "read_log"]

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


def _parse(line_no: int, text: str) -> LogRecord | None:
    """The record of one line, or ``None`` when it is malformed."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    ts = obj.get("ts")
    client = obj.get("client")
    path = obj.get("path")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return None
    if not isinstance(client, str) or not client or not isinstance(path, str) or not path.startswith("/"):
        return None
    if "body" not in obj:
        return None
    method = obj.get("method", "POST")
    headers = _headers(obj.get("headers"))
    if not isinstance(method, str) or headers is None:
        return None
    ip = obj.get("ip")
    tenant = obj.get("tenant")
    body = obj["body"]
    try:
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError):  # pragma: no cover - json.loads output always re-encodes
        return None
    return LogRecord(
        line=line_no,
        ts=float(ts),
        clock=float(ts),
        client=client,
        path=path.split("?", 1)[0],
        method=method.upper(),
        body=encoded,
        headers=headers,
        ip=ip if isinstance(ip, str) else None,
        tenant=tenant if isinstance(tenant, str) else None,
    )


def read_log(
    lines: Iterable[str], stats: LogStats, routes: RouteMatcher | None = None
) -> Iterator[LogRecord]:
    """Yield the usable records of ``lines`` (a file opened as text), counting the rest in
    ``stats``. Blank lines are ignored. A record earlier than one already read gets
    ``clock`` = the latest timestamp so far, so the replayed clock never goes back."""
    accept = routes or RouteMatcher(DEFAULT_ROUTES)
    latest = -math.inf
    line_no = 0
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        record = _parse(line_no, text)
        if record is None:
            stats.malformed.add(line_no)
            continue
        if not accept(record.path):
            stats.unknown_path.add(line_no)
            continue
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
        stats.lines = line_no
        yield record
    stats.lines = line_no

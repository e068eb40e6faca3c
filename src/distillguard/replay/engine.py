"""The offline engine: a request log through the same pipeline as the middleware.

Each usable log line becomes a :class:`~distillguard.request.GuardRequest` carrying the logged
identity, and :meth:`Guard.decide` runs the pipeline (``guard.flow`` driven by the sync driver
and the guard's sync performer), exactly as the WSGI middleware does. Limits are off offline
(``LimitConfig(default="")``): a log records what was served, so only the detectors and the
policy matter. The replay clock is the logged timestamp (never going back, see
:func:`~distillguard.replay.log.read_log`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..decision import Action, Decision
from ..guard import Guard
from ..identity import Identity
from ..limiting import LimitConfig
from ..policy import Policy
from ..query import Query, parse_query
from ..request import GuardRequest
from ..risk import RiskPolicy
from .campaigns import find_campaigns
from .log import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_ROUTES,
    LogRecord,
    LogStats,
    Oversized,
    RouteMatcher,
    read_log,
)
from .track import ClientTrack, request_shape

__all__ = ["FLAGGED_ACTIONS", "ReplayEngine", "ReplayResult", "offline_guard", "offline_policy"]

FLAGGED_ACTIONS = frozenset({Action.FLAG, Action.DEGRADE, Action.THROTTLE, Action.BLOCK})
"""Verdicts that count as flagging a client."""


def offline_policy(thresholds: Mapping[str, float] | None = None, *, flag: float = 0.5) -> Policy:
    """The replay policy: the risk policy (:class:`~distillguard.risk.RiskPolicy`: decaying
    per-client risk, degrade and block levels, penalty box) with the given calibrated
    per-detector thresholds, and without the throttle level (a throttle is a limit, and limits
    are off offline)."""
    risk = RiskPolicy(
        flag=flag,
        throttle=None,
        degrade=max(0.75, flag),
        block=max(0.9, flag),
        thresholds=dict(thresholds or {}),
    )
    return Policy(risk=risk)


def offline_guard(
    detectors: Iterable[Any] | Mapping[str, Mapping[str, Any]], policy: Policy | None = None
) -> Guard:
    """A guard for offline replay: no token verification (identities come from the log), no
    limits, no exempt paths; ``policy`` defaults to :func:`offline_policy`."""
    return Guard(
        jwt=None,
        limits=LimitConfig(default="", headers=False),
        detectors=detectors,
        policy=policy if policy is not None else offline_policy(),
        exempt_paths=(),
    )


@dataclass(slots=True, kw_only=True)
class ReplayResult:
    """Everything a replay found; :func:`~distillguard.replay.report.build_report` turns it
    into the report."""

    tracks: dict[str, ClientTrack]
    stats: LogStats
    detectors: tuple[str, ...]
    policy: Policy
    seconds: float
    errors: Counter[str] = field(default_factory=Counter)
    campaigns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lines_per_second(self) -> float:
        """Log lines read per second of wall time."""
        return self.stats.lines / self.seconds if self.seconds > 0 else 0.0

    def ranked(self) -> list[ClientTrack]:
        """Clients by suspicion: flagged first, then by highest risk, then by first flag."""
        return sorted(
            self.tracks.values(),
            key=lambda t: (
                t.first_flag_request is None,
                -t.max_risk,
                t.first_flag_ts if t.first_flag_ts is not None else 0.0,
                t.client,
            ),
        )


class ReplayEngine:
    """Replays records through ``guard`` and keeps bounded per-client state.

    Args:
        guard: the guard to replay through (see :func:`offline_guard`); it must be fresh, as
            its detectors keep per-client history.
        progress: where to write progress lines (e.g. ``sys.stderr``), or ``None``.
        progress_every: write a progress line every this many log lines.
        observer: called with each record and its decision (for benchmarks and custom reports).
        clock: the wall clock for the rate measurement.
        label: the first word of progress lines.
    """

    def __init__(
        self,
        guard: Guard,
        *,
        progress: TextIO | None = None,
        progress_every: int = 100_000,
        observer: Callable[[LogRecord, Decision], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        label: str = "replay",
    ) -> None:
        self.guard = guard
        self.tracks: dict[str, ClientTrack] = {}
        self.errors: Counter[str] = Counter()
        self._perform = guard.sync_performer()
        self._identities: dict[str, Identity] = {}
        self._progress = progress
        self._every = max(1, progress_every)
        self._clock = clock
        self._observer = observer
        self._label = label

    def feed(self, record: LogRecord) -> Decision:
        """Replay one record; return the guard's decision."""
        identity = self._identities.get(record.client)
        if identity is None:
            identity = Identity(client_id=record.client, tenant=record.tenant)
            self._identities[record.client] = identity
        headers = record.headers
        user_agent = headers.get("user-agent")
        request = GuardRequest(
            method=record.method,
            path=record.path,
            authorization=None,
            content_type=headers.get("content-type", "application/json"),
            body=record.body,
            client_address=record.ip,
            user_agent=user_agent,
            timestamp=record.clock,
            identity=identity,
        )
        guard = self.guard
        decision = guard.decide(request, self._perform)
        risk = decision.score
        query = decision.query
        if query is None:  # refused before parsing (penalty box) or the guard failed: risk still counts
            if guard.risk is not None:
                risk = max(risk, guard.risk.risk(record.client, record.clock))
            query = self._query(record.body, request.content_type, record.path)
        track = self.tracks.get(record.client)
        if track is None:
            track = self.tracks[record.client] = ClientTrack(record.client)
            track.ip = record.ip
            track.tenant = record.tenant
        track.observe(
            ts=record.ts,
            clock=record.clock,
            risk=risk,
            flagged=decision.action in FLAGGED_ACTIONS,
            scores=[(r.detector, r.score) for r in decision.results],
            online=record.decision,
        )
        track.observe_features(query.text, request_shape(record.path, query, user_agent))
        for error in decision.errors:
            self.errors[error] += 1
        return decision

    def _query(self, body: bytes, content_type: str, path: str) -> Query:
        """The query of a request the guard did not parse (the penalty box refused it, or the
        guard failed). The replay outlives a failure here too: the request still counts for its
        client, with an empty query, and the failure is counted as ``replay:<exception>``."""
        try:
            return parse_query(body, content_type, path)
        except Exception as exc:
            self.errors[f"replay:{type(exc).__name__}"] += 1
            return Query(kind="empty")

    def run(
        self,
        lines: Iterable[str | Oversized],
        routes: Iterable[str] = DEFAULT_ROUTES,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> ReplayResult:
        """Replay every line of a log (from :func:`~distillguard.replay.log.open_log`, an open
        text file or any iterable of lines)."""
        stats = LogStats()
        seconds = self.replay(lines, stats, routes, max_line_bytes=max_line_bytes)
        return self.result(stats, seconds)

    def replay(
        self,
        lines: Iterable[str | Oversized],
        stats: LogStats,
        routes: Iterable[str] = DEFAULT_ROUTES,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> float:
        """Feed every usable line to :meth:`feed`, counting the others in ``stats``; return the
        wall seconds. Progress counts every line read, so a long run of unusable lines shows
        too."""
        start = self._clock()
        progress = self._progress
        observer = self._observer

        def report(line: int) -> None:
            if progress is not None:
                self._report(progress, stats, line, self._clock() - start)

        records = read_log(
            lines,
            stats,
            RouteMatcher(routes),
            max_line_bytes=max_line_bytes,
            progress=report if progress is not None else None,
            progress_every=self._every,
        )
        for record in records:
            decision = self.feed(record)
            if observer is not None:
                observer(record, decision)
        seconds = self._clock() - start
        if progress is not None:
            self._report(progress, stats, stats.lines, seconds, done=True)
        return seconds

    def _report(self, out: TextIO, stats: LogStats, line: int, seconds: float, done: bool = False) -> None:
        flagged = sum(1 for t in self.tracks.values() if t.first_flag_request is not None)
        rate = line / seconds if seconds > 0 else 0.0
        word = "done" if done else self._label
        out.write(
            f"{word}: {line:,} lines ({rate:,.0f} lines/s), {len(self.tracks):,} clients, "
            f"{flagged:,} flagged, {stats.malformed.count:,} malformed\n"
        )
        out.flush()

    def result(self, stats: LogStats, seconds: float) -> ReplayResult:
        """The result so far (campaigns are computed here)."""
        flagged = [t for t in self.tracks.values() if t.first_flag_request is not None]
        flagged.sort(key=lambda t: t.client)
        return ReplayResult(
            tracks=self.tracks,
            stats=stats,
            detectors=tuple(d.name for d in self.guard.detectors),
            policy=self.guard.policy,
            seconds=seconds,
            errors=self.errors,
            campaigns=find_campaigns(flagged, self.tracks.values()),
        )

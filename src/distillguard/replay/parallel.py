"""Replaying one log in several processes, sharded by client.

Each worker reads the whole log, replays the clients of its shard (``crc32(client) % jobs``)
through its own guard, and the per-client results are merged. For detectors that keep state per
client only (``near_duplicate``, ``template_sweep``, ``coverage``, ``parameter_probe``,
``volume_timing``, ``prada``) and for the risk policy, a client's verdicts depend only on its own
stream, so the report equals a single-process replay (except where a detector's client cap would
have evicted clients in one process but not in several). Detectors with state *across* clients
see only their shard's clients: the opt-in ``campaign`` detector. With it, a sharded replay is
an approximation, like a deployment with several workers that do not share detector state; use
one process for the exact result.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from .engine import ReplayEngine, ReplayResult, offline_guard, offline_policy
from .log import DEFAULT_MAX_LINE_BYTES, LogStats, RouteMatcher, open_log, read_log
from .setup import resolve_detectors
from .track import ClientTrack

__all__ = ["ShardSpec", "replay_parallel"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSpec:
    """What a worker needs to build its guard and pick its clients (picklable).

    Attributes:
        path: the log file, or its files (read as one log).
        detectors: detector names (``None``: the default set).
        thresholds: calibrated per-detector thresholds.
        flag: the risk at which a client is flagged.
        routes: the model routes.
        jobs: the number of shards.
        progress_every: progress lines (worker 0 only), 0 for none.
        max_line_bytes: longer lines are skipped as oversized.
    """

    path: str | tuple[str, ...]
    detectors: Sequence[str] | None
    thresholds: Mapping[str, float] | None
    flag: float
    routes: Sequence[str]
    jobs: int
    progress_every: int = 0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


def _replay_shard(spec: ShardSpec, shard: int) -> tuple[dict[str, ClientTrack], LogStats, Counter[str]]:
    guard = offline_guard(resolve_detectors(spec.detectors), offline_policy(spec.thresholds, flag=spec.flag))
    engine = ReplayEngine(guard)
    stats = LogStats()
    jobs = spec.jobs
    every = spec.progress_every if shard == 0 else 0
    start = time.perf_counter()

    def report(line: int) -> None:
        rate = line / max(1e-9, time.perf_counter() - start)
        sys.stderr.write(f"replay: {line:,} lines ({rate:,.0f} lines/s, {jobs} processes)\n")
        sys.stderr.flush()

    with open_log(spec.path, max_line_bytes=spec.max_line_bytes) as lines:
        records = read_log(
            lines,
            stats,
            RouteMatcher(spec.routes),
            max_line_bytes=spec.max_line_bytes,
            progress=report if every else None,
            progress_every=every,
        )
        for record in records:
            if zlib.crc32(record.client.encode("utf-8", "surrogatepass")) % jobs == shard:
                engine.feed(record)
    return engine.tracks, stats, engine.errors


def replay_parallel(spec: ShardSpec) -> ReplayResult:
    """Replay ``spec.path`` in ``spec.jobs`` processes; return the merged result."""
    start = time.perf_counter()
    with ProcessPoolExecutor(spec.jobs) as pool:
        parts = list(pool.map(_replay_shard, [spec] * spec.jobs, range(spec.jobs)))
    tracks: dict[str, ClientTrack] = {}
    errors: Counter[str] = Counter()
    for part_tracks, _, part_errors in parts:
        tracks.update(part_tracks)
        errors.update(part_errors)
    stats = parts[0][1]  # every worker read the whole log: the counts are the same
    guard = offline_guard([], offline_policy(spec.thresholds, flag=spec.flag))
    engine = ReplayEngine(guard)
    engine.tracks = tracks
    engine.errors = errors
    result = engine.result(stats, time.perf_counter() - start)
    names = [d.name for d in resolve_detectors(spec.detectors)]
    result.detectors = tuple(names)
    return result

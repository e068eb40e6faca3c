"""Running the benchmark: logs through the replay engine (in process) or the ``distillguard
replay`` command (holdout), and the metrics of each scenario."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillguard.replay import (
    ReplayEngine,
    Thresholds,
    build_report,
    offline_guard,
    offline_policy,
    resolve_detectors,
)

from .scenarios import DETECT_WITHIN, SHARES
from .streams import Stream, write_log

__all__ = ["BenignDays", "Metrics", "evaluate", "replay_command", "replay_in_process"]


@dataclass
class BenignDays:
    """Benign client-days and the flagged ones, by benign kind."""

    days: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    flagged: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        """All benign client-days."""
        return sum(self.days.values())

    @property
    def total_flagged(self) -> int:
        """All flagged benign client-days."""
        return sum(self.flagged.values())


@dataclass
class Metrics:
    """The results of one run."""

    lines: int = 0
    seconds: float = 0.0
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    mixed: dict[tuple[str, float], dict[str, Any]] = field(default_factory=dict)
    campaigns: dict[str, dict[str, Any]] = field(default_factory=dict)
    benign: BenignDays = field(default_factory=BenignDays)
    benign_clients: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (clients, flagged)


def replay_in_process(
    streams: Sequence[Stream],
    log: Path,
    detectors: Callable[[], list[Any]],
    thresholds: Thresholds | None = None,
) -> tuple[dict[str, Any], BenignDays]:
    """Write ``streams`` to ``log``, replay it through the engine; return the report and the
    benign client-days."""
    write_log(streams, log)
    policy = offline_policy(thresholds.detectors if thresholds is not None else None)
    engine = ReplayEngine(offline_guard(detectors(), policy))
    with log.open(encoding="utf-8") as lines:
        result = engine.run(lines)
    days = BenignDays()
    for stream in streams:
        if stream.role == "benign":
            track = result.tracks.get(stream.name)
            if track is not None:
                days.days[stream.kind] += track.days
                days.flagged[stream.kind] += track.flagged_days
    return build_report(result), days


def _command() -> list[str]:
    """The ``distillguard`` command (the console script next to this interpreter)."""
    script = Path(sys.executable).parent / "distillguard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from distillguard.cli import main; sys.exit(main())"]


def replay_command(
    log: Path, out: Path, *, config: Path | None = None, detectors: str | None = None
) -> dict[str, Any]:
    """Run ``distillguard replay`` on ``log`` in a child process; return its JSON report."""
    argv = [*_command(), "replay", str(log), "--json", str(out), "--quiet"]
    if config is not None:
        argv += ["--config", str(config)]
    if detectors:
        argv += ["--detectors", detectors]
    subprocess.run(argv, check=True)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def calibrate_command(
    log: Path, out: Path, *, percentile: float, detectors: str | None = None, floor: float = 0.5
) -> None:
    """Run ``distillguard calibrate`` on a benign log."""
    argv = [*_command(), "calibrate", str(log), "--out", str(out), "--quiet"]
    argv += ["--percentile", str(percentile), "--floor", str(floor)]
    if detectors:
        argv += ["--detectors", detectors]
    subprocess.run(argv, check=True)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _served_before(streams: Sequence[Stream], ts: float) -> int:
    return sum(1 for s in streams for t, _, _ in s.events if t < ts)


def evaluate(streams: Sequence[Stream], report: dict[str, Any], benign: BenignDays | None) -> Metrics:
    """The metrics of a run from its report (and the benign client-days, when known)."""
    entries = {c["client"]: c for c in report["clients"]}
    metrics = Metrics(lines=report["summary"]["lines"], seconds=report["summary"]["seconds"])
    if benign is not None:
        metrics.benign = benign

    def first(stream: Stream) -> int | None:
        entry = entries.get(stream.name)
        return None if entry is None else entry["first_flag_request"]

    by_kind: dict[str, list[Stream]] = defaultdict(list)
    for stream in streams:
        by_kind[stream.kind].append(stream)
    for kind, group in sorted(by_kind.items()):
        role, _, rest = kind.partition(":")
        if role == "attack":
            within = DETECT_WITHIN[rest]
            firsts = [first(s) for s in group]
            caught = [q for q in firsts if q is not None]
            metrics.families[rest] = {
                "clients": len(group),
                "queries": len(group[0].events),
                "within": within,
                "caught_within": sum(1 for q in caught if q <= within),
                "caught": len(caught),
                "median": _median(caught),
                "max": max(caught) if caught else None,
            }
        elif role == "mixed":
            family, _, share = rest.partition(":")
            firsts = [first(s) for s in group]
            caught = [q for q in firsts if q is not None]
            attack_before = []
            for s, q in zip(group, firsts, strict=True):
                if q is not None:
                    attack_before.append(sum(s.attack[:q]))
            metrics.mixed[(family, int(share) / 100)] = {
                "clients": len(group),
                "queries": len(group[0].events),
                "caught": len(caught),
                "median": _median(caught),
                "attack_median": _median(attack_before),
            }
        elif role == "benign":
            flagged = sum(1 for s in group if first(s) is not None)
            metrics.benign_clients[kind] = (len(group), flagged)
    groups: dict[str, list[Stream]] = defaultdict(list)
    for stream in streams:
        if stream.role == "campaign" and stream.group is not None:
            groups[stream.group].append(stream)
    for name, members in sorted(groups.items()):
        total = sum(len(s.events) for s in members)
        flag_ts = sorted(
            e["first_flag_ts"] for s in members if (e := entries.get(s.name)) and e["first_flag_ts"]
        )
        names = {s.name for s in members}
        grouped = max((len(names & set(c["clients"])) for c in report["campaigns"]), default=0)
        metrics.campaigns[name] = {
            "accounts": len(members),
            "queries": total,
            "flagged_accounts": len(flag_ts),
            "first": _served_before(members, flag_ts[0]) / total if flag_ts else None,
            "second": _served_before(members, flag_ts[1]) / total if len(flag_ts) > 1 else None,
            "grouped": grouped,
        }
    return metrics


def standard_detectors(names: str | None) -> Callable[[], list[Any]]:
    """A factory of fresh detectors (named, or the defaults)."""

    def make() -> list[Any]:
        chosen = [n.strip() for n in names.split(",")] if names else None
        return resolve_detectors(chosen)

    return make


def shares() -> tuple[float, ...]:
    """The mixed-traffic shares."""
    return SHARES

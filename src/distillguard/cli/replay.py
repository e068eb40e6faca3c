"""``distillguard replay LOG.jsonl --json report.json --html report.html``: replay a request log
offline through the detectors and the policy, and report the suspicious clients."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

from ..errors import DistillGuardError
from ..replay import (
    DEFAULT_ROUTES,
    LogStats,
    ReplayEngine,
    Thresholds,
    build_report,
    offline_guard,
    offline_policy,
    resolve_detectors,
    write_html,
    write_json,
)
from ..replay.log import DEFAULT_MAX_LINE_BYTES, Oversized, open_log as _open_log
from ..replay.output import unwritable
from ..replay.parallel import ShardSpec, replay_parallel

__all__ = ["register", "run"]

MILLISECONDS = 1e11
"""A largest ``ts`` above this (the year 5138 in seconds, 1973 in milliseconds) is taken for a
log in milliseconds, and warned about."""


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def count(text: str) -> int:
    """An argument that is a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def positive(text: str) -> int:
    """An argument that is a whole number >= 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``replay`` and ``calibrate``."""
    parser.add_argument(
        "--detectors",
        metavar="NAMES",
        help="comma-separated detector names (entry points); default: the built-in default set",
    )
    parser.add_argument(
        "--routes",
        metavar="PATHS",
        help="comma-separated model routes to replay (a trailing / matches a prefix); "
        "other paths are counted as unknown. Default: " + ",".join(DEFAULT_ROUTES),
    )
    parser.add_argument("--all-routes", action="store_true", help="replay every path")
    parser.add_argument(
        "--progress-every",
        type=positive,
        default=100_000,
        metavar="N",
        help="progress on stderr every N lines read",
    )
    parser.add_argument(
        "--max-line-bytes",
        type=positive,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help="skip longer lines, counted as oversized (default 16 MiB)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output and no summary")


def routes_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The routes chosen on the command line."""
    if args.all_routes:
        return ()
    names = _names(args.routes)
    return tuple(names) if names else DEFAULT_ROUTES


def open_log(args: argparse.Namespace) -> AbstractContextManager[Iterator[str | Oversized]]:
    """The log's lines (``-`` is standard input; gzip is recognised), read the same way for
    files and standard input (see :func:`distillguard.replay.log.open_log`)."""
    return _open_log(args.log, max_line_bytes=args.max_line_bytes)


def outputs_ok(command: str, paths: Iterable[str | None]) -> bool:
    """Whether every output path can be written, checked before the work starts (a replay takes
    minutes); prints why not on stderr."""
    for path in paths:
        if path is None:
            continue
        problem = unwritable(path)
        if problem is not None:
            print(f"distillguard {command}: cannot write {path}: {problem}", file=sys.stderr)
            return False
    return True


def report_log(
    stats: LogStats,
    clients: int,
    *,
    quiet: bool,
    verdicts: str = "",
    errors: Mapping[str, int] | None = None,
) -> None:
    """What reading the log found, on stderr: one line of counts (unless ``quiet``; ``verdicts``
    is inserted after the clients), then warnings (always): timestamps that look like
    milliseconds, and internal errors."""
    if not quiet:
        extra = "".join(
            f", {counted.count:,} {label}"
            for counted, label in ((stats.oversized, "oversized"), (stats.unparsed_bodies, "unparsed bodies"))
            if counted.count
        )
        print(
            f"{stats.replayed:,} requests from {clients:,} clients; {verdicts}"
            f"{stats.malformed.count:,} malformed, {stats.out_of_order.count:,} out of order, "
            f"{stats.unknown_path.count:,} unknown paths{extra}",
            file=sys.stderr,
        )
    if stats.last_ts is not None and stats.last_ts > MILLISECONDS:
        print(
            f"warning: timestamps look like milliseconds (largest ts {stats.last_ts:.0f}); ts must be "
            "unix seconds, or days, windows and rates are wrong",
            file=sys.stderr,
        )
    if errors:
        listed = ", ".join(f"{name} {n:,}" for name, n in sorted(errors.items()))
        print(f"warning: internal errors while replaying: {listed}", file=sys.stderr)


def register(subparsers: Any) -> None:
    """Add the ``replay`` sub-command."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a request log offline through the detectors",
        description="Replay a JSON-lines request log (ts, client, path, body per line) through the "
        "same detectors and policy as the middleware, and write a JSON and/or HTML report.",
    )
    parser.add_argument(
        "log",
        nargs="+",
        help="the request log (JSON lines; several files, e.g. one per worker, are read as one), "
        "or - for standard input",
    )
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--html", metavar="PATH", help="write the HTML report here")
    parser.add_argument(
        "--config", metavar="PATH", help="thresholds file written by 'distillguard calibrate'"
    )
    parser.add_argument("--top", type=count, default=25, metavar="N", help="clients shown in the HTML report")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="replay in N processes, sharded by client: exact for per-client detectors, an approximation "
        "for detectors with cross-client state (campaign); not for stdin",
    )
    parser.add_argument(
        "--flag", type=float, default=0.5, help="risk at which a client is flagged (default 0.5)"
    )
    add_common(parser)
    parser.set_defaults(func=run)


def _unknown_thresholds(thresholds: Mapping[str, float] | None, detectors: Iterable[Any]) -> None:
    """Warn about thresholds for detectors this run does not have: a plugin may be missing (not
    refused, so a file serves runs with different detector sets)."""
    unknown = sorted(set(thresholds or {}) - {d.name for d in detectors})
    if unknown:
        print(
            f"warning: the thresholds file names detectors not in this run: {', '.join(unknown)}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    """Run ``replay``; return the exit status (2 for a configuration, input or output error)."""
    try:
        thresholds = Thresholds.load(args.config).detectors if args.config else None
        policy = offline_policy(thresholds, flag=args.flag)
        detectors = resolve_detectors(_names(args.detectors))
        guard = offline_guard(detectors, policy)
    except DistillGuardError as exc:
        print(f"distillguard replay: {exc}", file=sys.stderr)
        return 2
    _unknown_thresholds(thresholds, detectors)
    if not outputs_ok("replay", (args.json, args.html)):
        return 2
    try:
        if args.jobs > 1 and args.log != ["-"]:
            with open_log(args):  # fail here, not in every worker
                pass
            spec = ShardSpec(
                path=tuple(args.log),
                detectors=_names(args.detectors),
                thresholds=thresholds,
                flag=args.flag,
                routes=routes_of(args),
                jobs=args.jobs,
                progress_every=0 if args.quiet else args.progress_every,
                max_line_bytes=args.max_line_bytes,
            )
            result = replay_parallel(spec)
        else:
            engine = ReplayEngine(
                guard, progress=None if args.quiet else sys.stderr, progress_every=args.progress_every
            )
            with open_log(args) as lines:
                result = engine.run(lines, routes_of(args), max_line_bytes=args.max_line_bytes)
    except OSError as exc:
        print(f"distillguard replay: cannot read {' '.join(args.log)}: {exc}", file=sys.stderr)
        return 2
    report = build_report(result)
    summary = report["summary"]
    written = ""
    try:
        if args.json:
            written = args.json
            write_json(report, args.json)
        if args.html:
            written = args.html
            write_html(result, args.html, top=args.top, report=report)
    except OSError as exc:
        print(f"distillguard replay: cannot write {written}: {exc}", file=sys.stderr)
        return 2
    verdicts = f"{summary['flagged_clients']:,} flagged, {summary['campaigns']:,} campaigns; "
    report_log(result.stats, summary["clients"], quiet=args.quiet, verdicts=verdicts, errors=result.errors)
    return 0

"""``distillguard replay LOG.jsonl --json report.json --html report.html``: replay a request log
offline through the detectors and the policy, and report the suspicious clients."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..errors import DistillGuardError
from ..replay import (
    DEFAULT_ROUTES,
    ReplayEngine,
    Thresholds,
    build_report,
    offline_guard,
    offline_policy,
    resolve_detectors,
    write_html,
    write_json,
)
from ..replay.parallel import ShardSpec, replay_parallel

__all__ = ["register", "run"]


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


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
        "--progress-every", type=int, default=100_000, metavar="N", help="progress on stderr every N lines"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def routes_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The routes chosen on the command line."""
    if args.all_routes:
        return ()
    names = _names(args.routes)
    return tuple(names) if names else DEFAULT_ROUTES


@contextmanager
def open_log(path: str) -> Iterator[TextIO]:
    """The log as text lines (``-`` is standard input)."""
    if path == "-":
        yield sys.stdin
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        yield handle


def register(subparsers: Any) -> None:
    """Add the ``replay`` sub-command."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a request log offline through the detectors",
        description="Replay a JSON-lines request log (ts, client, path, body per line) through the "
        "same detectors and policy as the middleware, and write a JSON and/or HTML report.",
    )
    parser.add_argument("log", help="the request log (JSON lines), or - for standard input")
    parser.add_argument("--json", metavar="PATH", help="write the JSON report here")
    parser.add_argument("--html", metavar="PATH", help="write the HTML report here")
    parser.add_argument(
        "--config", metavar="PATH", help="thresholds file written by 'distillguard calibrate'"
    )
    parser.add_argument("--top", type=int, default=25, metavar="N", help="clients shown in the HTML report")
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


def run(args: argparse.Namespace) -> int:
    """Run ``replay``; return the exit status."""
    try:
        thresholds = Thresholds.load(args.config).detectors if args.config else None
        policy = offline_policy(thresholds, flag=args.flag)
        guard = offline_guard(resolve_detectors(_names(args.detectors)), policy)
    except DistillGuardError as exc:
        print(f"distillguard replay: {exc}", file=sys.stderr)
        return 2
    try:
        if args.jobs > 1 and args.log != "-":
            spec = ShardSpec(
                path=args.log,
                detectors=_names(args.detectors),
                thresholds=thresholds,
                flag=args.flag,
                routes=routes_of(args),
                jobs=args.jobs,
                progress_every=0 if args.quiet else args.progress_every,
            )
            result = replay_parallel(spec)
        else:
            engine = ReplayEngine(
                guard, progress=None if args.quiet else sys.stderr, progress_every=args.progress_every
            )
            with open_log(args.log) as lines:
                result = engine.run(lines, routes_of(args))
    except OSError as exc:
        print(f"distillguard replay: cannot read {args.log}: {exc}", file=sys.stderr)
        return 2
    report = build_report(result)
    if args.json:
        write_json(report, args.json)
    if args.html:
        write_html(result, args.html, top=args.top, report=report)
    summary = report["summary"]
    if not args.quiet:
        print(
            f"{summary['replayed']:,} requests from {summary['clients']:,} clients; "
            f"{summary['flagged_clients']:,} flagged, {summary['campaigns']:,} campaigns; "
            f"{summary['malformed']['count']:,} malformed, "
            f"{summary['out_of_order']['count']:,} out of order, "
            f"{summary['unknown_path']['count']:,} unknown paths",
            file=sys.stderr,
        )
    return 0

"""``distillguard calibrate BENIGN.jsonl --out thresholds.json``: detector thresholds as
percentiles of their benign null (see :mod:`distillguard.replay.calibration`)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from ..errors import DistillGuardError
from ..replay import LogStats, calibrate, resolve_detectors
from .replay import _names, add_common, open_log, outputs_ok, report_log, routes_of

__all__ = ["register", "run"]


def window_seconds(text: str) -> float:
    """A client-window length: a finite number of seconds, at least one."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 1")
    return value


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` sub-command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="derive detector thresholds from a benign request log",
        description="Run the detectors over a benign request log (same format as replay), take each "
        "detector's highest score per client-window as its benign null, and write thresholds at a "
        "percentile of that null.",
    )
    parser.add_argument(
        "log",
        nargs="+",
        help="the benign request log (JSON lines; several files are read as one), or - for standard input",
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="the thresholds file to write")
    parser.add_argument(
        "--percentile", type=float, default=99.9, help="percentile of the null (default 99.9)"
    )
    parser.add_argument(
        "--window-seconds",
        type=window_seconds,
        default=86_400.0,
        help="client-window length in seconds, at least 1 (default one UTC day)",
    )
    parser.add_argument(
        "--floor", type=float, default=0.5, help="lowest threshold allowed (default 0.5, the flag level)"
    )
    add_common(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``calibrate``; return the exit status (2 for a configuration, input or output error)."""
    if not outputs_ok("calibrate", (args.out,)):
        return 2
    stats = LogStats()
    try:
        detectors = resolve_detectors(_names(args.detectors))
        with open_log(args) as lines:
            thresholds = calibrate(
                lines,
                detectors,
                p=args.percentile,
                window_seconds=args.window_seconds,
                floor=args.floor,
                routes=routes_of(args),
                stats=stats,
                progress=None if args.quiet else sys.stderr,
                progress_every=args.progress_every,
                max_line_bytes=args.max_line_bytes,
            )
    except DistillGuardError as exc:
        if stats.lines:
            report_log(stats, 0, quiet=args.quiet)
        print(f"distillguard calibrate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"distillguard calibrate: cannot read {' '.join(args.log)}: {exc}", file=sys.stderr)
        return 2
    try:
        thresholds.save(args.out)
    except OSError as exc:
        print(f"distillguard calibrate: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    # a failing detector scored 0, which lowers its null: warned about, as replay does
    report_log(stats, thresholds.clients, quiet=args.quiet, errors=thresholds.errors)
    if not args.quiet:
        for name, value in sorted(thresholds.detectors.items()):
            n = thresholds.samples.get(name, 0)
            print(
                f"{name}: {value:.4f} (p{thresholds.percentile:g} of {n:,} client-windows)", file=sys.stderr
            )
        low = min(thresholds.samples.values(), default=0)
        if low < 1000 / (100.0 - thresholds.percentile):
            print(
                f"warning: {low:,} client-windows are too few to estimate the p{thresholds.percentile:g} "
                "tail; the thresholds rest on the highest benign scores",
                file=sys.stderr,
            )
    return 0

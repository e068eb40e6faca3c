"""``python -m benchmarks.detection.biglog OUT.jsonl --lines 1000000``: a large synthetic request
log for throughput measurements (the benchmark's tuning population, repeated in consecutive
periods with fresh seeds and client names, in time order)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .scenarios import Scale, population, tuning_corpus
from .streams import DAY, write_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection.biglog", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    scale = Scale()
    corpus = tuning_corpus()
    written = 0
    period = 0
    parts: list[Path] = []
    while written < args.lines:
        streams = population(corpus, "tuning", args.seed + period, scale)
        shift = period * (scale.days + 1) * DAY  # one spare day: late sessions spill past the last day
        for stream in streams:
            stream.client.name = f"p{period}-{stream.client.name}"
            stream.events = [(ts + shift, route, body) for ts, route, body in stream.events]
        events = sorted((ts, i) for i, s in enumerate(streams) for ts, _, _ in s.events)
        keep = args.lines - written
        if len(events) > keep:  # cut the last period at the requested number of lines
            cutoff = events[keep - 1][0]
            for stream in streams:
                stream.events = [e for e in stream.events if e[0] <= cutoff]
        part = args.out.with_suffix(f".part{period}")
        written += write_log(streams, part)
        parts.append(part)
        print(f"period {period}: {written:,} lines", file=sys.stderr)
        period += 1
    with args.out.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
            part.unlink()
    print(f"wrote {written:,} lines to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks.coverage_null``: the coverage detector alone on the detection
benchmark's populations (benign null and sweeps), fast.

Generates the tuning and holdout populations of ``benchmarks.detection`` (benign users,
single-client attackers, heavy users with a share of attack queries), runs each client's
prompts through a fresh :class:`~distillguard.detectors.coverage.CoverageDetector` (one client
at a time: the detector has no cross-client state), and prints per scenario the novelty
its clients reached after ``min_requests`` queries (the highest, and the lowest of the
per-client maxima) and when the score first reached the flag level (0.5).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
from typing import Any

from distillguard.detectors import Observation
from distillguard.detectors.coverage import CoverageDetector
from distillguard.identity import Identity
from distillguard.query import parse_query

from .detection.scenarios import Scale, holdout_corpus, population, tuning_corpus

FLAG = 0.5


_IDENTITY = Identity(client_id="client")


def _observation(ts: float, path: str, body: dict[str, Any]) -> Observation:
    query = parse_query(json.dumps(body).encode())
    return Observation(identity=_IDENTITY, timestamp=ts, method="POST", route=path, query=query)


def run(part: str, seed: int, scale: Scale) -> dict[str, list[tuple[float, float, int | None, int]]]:
    """``{kind: [(max novelty, max score, first flagged request or None, requests)]}``."""
    corpus = tuning_corpus() if part == "tuning" else holdout_corpus(random.Random(seed))
    streams = population(corpus, part, seed, scale)
    out: dict[str, list[tuple[float, float, int | None, int]]] = collections.defaultdict(list)
    for stream in streams:
        if stream.role == "campaign":
            continue
        det = CoverageDetector()
        top_novelty = top = 0.0
        first = None
        for i, (ts, path, body) in enumerate(stream.events, 1):
            result = det.score(_observation(ts, path, body))
            top = max(top, result.score)
            state = det.states.peek(_IDENTITY.client_id)
            if state is not None and i >= det.min_requests:
                top_novelty = max(top_novelty, state.novelty)
            if first is None and result.score >= FLAG:
                first = i
        out[stream.kind].append((top_novelty, top, first, len(stream.events)))
    return out


def from_query(
    part: str, seed: int, scale: Scale, starts: list[int]
) -> dict[str, list[tuple[float, float] | None]]:
    """``{kind: [(highest, lowest) of the clients' highest novelty from query n on, for
    each n of starts]}`` (``None`` when no client of the kind sends n queries), campaign
    accounts included: what a warm-up of n queries would see."""
    corpus = tuning_corpus() if part == "tuning" else holdout_corpus(random.Random(seed))
    trajectories: dict[str, list[list[float]]] = collections.defaultdict(list)
    for stream in population(corpus, part, seed, scale):
        det = CoverageDetector()
        novelty = []
        for ts, path, body in stream.events:
            det.score(_observation(ts, path, body))
            state = det.states.peek(_IDENTITY.client_id)
            novelty.append(state.novelty if state is not None else 0.0)
        trajectories[stream.kind].append(novelty)
    out: dict[str, list[tuple[float, float] | None]] = {}
    for kind, runs in sorted(trajectories.items()):
        row: list[tuple[float, float] | None] = []
        for n in starts:
            tops = [max(t[n - 1 :]) for t in runs if len(t) >= n]
            row.append((max(tops), min(tops)) if tops else None)
        out[kind] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coverage_null", description=__doc__)
    parser.add_argument("--seeds", default="1001,3001", help="tuning seed, holdout seed")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument(
        "--starts",
        help="instead: the highest and lowest novelty each kind of client reaches from query n on, "
        "for each n of this comma-separated list (what a warm-up of n would see)",
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    scale = Scale(users=args.users, mixed=10)
    if args.starts:
        starts = [int(n) for n in args.starts.split(",")]
        for part, seed in zip(("tuning", "holdout"), seeds, strict=True):
            table = from_query(part, seed, scale if part == "tuning" else scale.holdout(), starts)
            print(f"\n{part} (seed {seed}): highest/lowest novelty from query n on")
            print(f"{'client kind':36} " + " ".join(f"{'n=' + str(n):>9}" for n in starts))
            for kind, row in table.items():
                cells = " ".join(f"{c[0]:.2f}/{c[1]:.2f}" if c else f"{'-':>9}" for c in row)
                print(f"{kind:36} {cells}")
        return 0
    for part, seed in zip(("tuning", "holdout"), seeds, strict=True):
        results = run(part, seed, scale if part == "tuning" else scale.holdout())
        print(f"\n{part} (seed {seed})")
        head = f"{'scenario':26} {'clients':>7} {'novelty max':>11} {'lowest':>6} {'flagged':>8}"
        print(f"{head} {'median q':>8} {'worst q':>8}")
        for kind in sorted(results):
            rows = results[kind]
            firsts = [r[2] for r in rows if r[2] is not None]
            median = f"{statistics.median(firsts):.0f}" if firsts else "-"
            worst = f"{max(firsts)}" if firsts else "-"
            top = max(r[0] for r in rows)
            lowest = min(r[0] for r in rows)
            flagged = f"{len(firsts):4}/{len(rows):<3}"
            print(f"{kind:26} {len(rows):7} {top:11.3f} {lowest:6.3f} {flagged} {median:>8} {worst:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

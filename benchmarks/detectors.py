"""Per-request cost of the default detector set (a script, not a test).

    python -m benchmarks.detectors            # the tables
    python -m benchmarks.detectors --write docs/benchmarks.md   # ...also into its detectors section
    python -m benchmarks.detectors --quick    # fewer repeats
    python -m benchmarks.detectors --null     # the benign null of each detector's score

For each prompt size (256 B, 1 KB, 4 KB, 16 KB of natural-looking text) it builds a client with
10 earlier queries and one with 100,000 earlier queries, then times ``score()`` of every
detector of ``default_detectors()`` on fresh prompts of that size (each request is a new
:class:`Query`, so the shared text features are recomputed every time, as in production).
Reported: the median over repeats of the per-request wall time (``time.perf_counter``; each
repeat times a few hundred requests) and CPU time (``time.process_time``), and the memory held
per client (``deep_sizeof`` of every detector's state). Then each detector's own mean time at
1 KB (the shared text features computed before the timer starts, and timed apart), and the
memory the whole set retains per client (``tracemalloc``: 1,000 clients seen once, and 100
clients after 130 queries each, when every window is full).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

from distillguard.detectors import Observation, _text
from distillguard.detectors._state import deep_sizeof
from distillguard.detectors.defaults import default_detectors
from distillguard.identity import Identity
from distillguard.query import Query, parse_query

from ._report import reference_ms, replace_section
from .overhead import commit

START = "<!-- detectors:start -->"
END = "<!-- detectors:end -->"

_VOCABULARY = (
    "the a of to and in is you that it for on with as can how what why when my your this be are "
    "explain model data question answer time people water city music history science computer "
    "garden recipe travel budget health story idea problem system energy language market school "
    "network animal planet weather book film coffee river mountain train window family friend"
)
WORDS = _VOCABULARY.split()


def prompt(rng: random.Random, size: int) -> str:
    """Random natural-looking text of about ``size`` bytes."""
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS) if rng.random() < 0.8 else f"{rng.choice(WORDS)}{rng.randrange(1000)}"
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def body(text: str) -> bytes:
    """A chat request body."""
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def observation(client: str, query: Query, ts: float) -> Observation:
    """An observation from ``client``."""
    identity = Identity(client_id=client)
    return Observation(identity=identity, timestamp=ts, method="POST", route="/v1/chat", query=query)


def _client(size: int, history: int, rng: random.Random) -> tuple[list[Any], str, float]:
    """Fresh default detectors that have seen ``history`` earlier queries of ``size`` bytes
    from one client; returns the detectors, the client and the last timestamp."""
    detectors = default_detectors()
    client = f"c{size}-{history}"
    pool = [parse_query(body(prompt(rng, size))) for _ in range(min(history, 500))]
    ts = 1_700_000_000.0
    for i in range(history):
        ts += 3.0 + rng.random()
        obs = observation(client, pool[i % len(pool)], ts)
        for det in detectors:
            det.score(obs)
    return detectors, client, ts


def _time(detectors: list[Any], client: str, queries: list[Query], ts: float) -> tuple[float, float]:
    batch = [observation(client, q, ts + 3.0 * (i + 1)) for i, q in enumerate(queries)]
    start, start_cpu = time.perf_counter(), time.process_time()
    for obs in batch:
        for det in detectors:
            det.score(obs)
    return (time.perf_counter() - start) / len(batch), (time.process_time() - start_cpu) / len(batch)


def measure(size: int, requests: int, repeats: int, seed: int = 1) -> dict[str, float]:
    """Median per-request wall time (``time.perf_counter``) and CPU time (``time.process_time``,
    this process only: less disturbed by other load on the machine) of the default set, for a
    client with 10 and one with 100,000 earlier queries (timed alternately, so that both see
    the same machine load), and the bytes of state held per client."""
    rng = random.Random(seed)
    young, young_id, young_ts = _client(size, 10, rng)
    old, old_id, old_ts = _client(size, 100_000, rng)
    fresh = [parse_query(body(prompt(rng, size))) for _ in range(requests * repeats)]
    walls: dict[str, list[float]] = {"young": [], "old": []}
    cpus: dict[str, list[float]] = {"young": [], "old": []}
    for r in range(repeats):
        batch = fresh[r * requests : (r + 1) * requests]
        for key, (dets, client, ts) in (
            ("young", (young, young_id, young_ts)),
            ("old", (old, old_id, old_ts)),
        ):
            wall, cpu = _time(dets, client, batch, ts + 10_000.0 * r)
            walls[key].append(wall)
            cpus[key].append(cpu)
    memory = {
        key: sum(deep_sizeof(det.states.get(client)) for det in dets if hasattr(det, "states"))
        for key, dets, client in (("young", young, young_id), ("old", old, old_id))
    }
    return {
        "young": statistics.median(walls["young"]),
        "old": statistics.median(walls["old"]),
        "young_cpu": statistics.median(cpus["young"]),
        "old_cpu": statistics.median(cpus["old"]),
        "young_mem": memory["young"],
        "old_mem": memory["old"],
    }


def null(clients: int = 200) -> None:
    """Print each detector's benign null: the highest score per benign client (generated
    conversational users of 300 requests and jailbreak-prompt replayers of 200), its 99th and
    99.9th percentiles as :func:`distillguard.risk.calibrate` computes them, and its maximum."""
    from tests.detectors.traffic import benign_prompts, jailbreak_prompts

    from distillguard.risk import calibrate

    jailbreaks = jailbreak_prompts()
    maxima: dict[str, list[float]] = {d.name: [] for d in default_detectors()}
    for i in range(clients):
        rng = random.Random(i)
        texts = rng.sample(jailbreaks, 200) if i % 4 == 3 else list(benign_prompts(rng, 300))
        detectors = default_detectors()
        top = dict.fromkeys(maxima, 0.0)
        ts = 1_700_000_000.0
        for text in texts:
            ts += rng.expovariate(1 / 30)
            obs = observation(f"b{i}", parse_query(body(text)), ts)
            for det in detectors:
                top[det.name] = max(top[det.name], det.score(obs).score)
        for name, value in top.items():
            maxima[name].append(value)
    raw = {"floor": 1e-9, "ceiling": 1.0 - 1e-9}
    p99, p999 = calibrate(maxima, 99.0, **raw), calibrate(maxima, 99.9, **raw)
    threshold = calibrate(maxima, 99.9)
    print(f"benign null over {clients} clients (max score per client)\n")
    print("| detector | p99 | p99.9 | max | clients >= 0.5 | calibrate(p=99.9) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in maxima.items():
        flagged = sum(v >= 0.5 for v in values)
        print(
            f"| {name} | {p99[name]:.3f} | {p999[name]:.3f} | {max(values):.3f} | {flagged} "
            f"| {threshold[name]:.3f} |"
        )


def per_detector(requests: int, repeats: int, seed: int = 2) -> tuple[float, dict[str, float]]:
    """Mean microseconds of the shared text features and of each detector's ``score`` alone
    (features computed beforehand; the timer's own cost per call subtracted), 1 KB prompts, a
    client with 200 earlier queries; best of ``repeats``."""
    rng = random.Random(seed)
    detectors, client, ts = _client(1024, 200, rng)
    queries = [parse_query(body(prompt(rng, 1024))) for _ in range(requests)]
    feature_best = float("inf")
    best = {det.name: float("inf") for det in detectors}
    for r in range(repeats):
        batch = [observation(client, q, ts + 3.0 * (i + 1) + 10_000.0 * r) for i, q in enumerate(queries)]
        start = time.process_time()
        for obs in batch:
            feats = _text.TextFeatures(_text.prompt_text(obs.query))
            _ = feats.content, feats.skeleton
        feature_best = min(feature_best, time.process_time() - start)
        for det in detectors:
            spent = 0.0
            for obs in batch:
                feats = _text.features(obs.query)  # computed here, outside the timer
                _ = feats.content, feats.skeleton, feats.hashes
                start = time.process_time()
                det.score(obs)
                spent += time.process_time() - start
            best[det.name] = min(best[det.name], spent)
    clock = min(_clock_cost() for _ in range(repeats))  # the timer's own cost, taken off each call
    return feature_best / requests * 1e6, {name: (t / requests - clock) * 1e6 for name, t in best.items()}


def _clock_cost(calls: int = 5_000) -> float:
    """Seconds that an empty ``start = process_time(); spent += process_time() - start`` span
    measures (the timer's own share of each timed call)."""
    spent = 0.0
    for _ in range(calls):
        start = time.process_time()
        spent += time.process_time() - start
    return spent / calls


def memory_per_client(clients: int, requests: int, seed: int = 3) -> float:
    """Bytes the default set retains per client (tracemalloc) after ``requests`` 1 KB queries
    from each of ``clients`` new clients."""
    rng = random.Random(seed)
    pool = [parse_query(body(prompt(rng, 1024))) for _ in range(300)]
    detectors = default_detectors()
    names = [f"client-{c:05d}" for c in range(clients)]
    streams = [
        [observation(name, pool[(7 * c + i) % len(pool)], 1_700_000_000.0 + 3.0 * i) for i in range(requests)]
        for c, name in enumerate(names)
    ]
    for det in detectors:
        det.score(observation("warm-up", pool[0], 1_700_000_000.0))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for stream in streams:
        for obs in stream:
            for det in detectors:
                det.score(obs)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / clients


def write_section(path: Path, report: str) -> None:
    """Replace the detectors section of ``path`` (or append it), leaving the rest alone."""
    replace_section(path, START, END, report)


def main() -> None:
    """Print the tables (and write them into a Markdown file with ``--write``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--null", action="store_true", help="print the benign null instead")
    parser.add_argument("--write", type=Path, default=None, help="write the section into this Markdown file")
    args = parser.parse_args()
    if args.null:
        null()
        return
    requests, repeats = (100, 5) if args.quick else (300, 15)
    names = ", ".join(d.name for d in default_detectors())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python -m benchmarks.detectors" + (" --quick" if args.quick else "")
    out = [
        "## Detectors",
        "",
        f"Command: `{command}`. Machine: {os.cpu_count()} CPUs, Python {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, load average {load:.1f} at the start; {now}; "
        f"{commit()}.",
        f"Default detectors: {names}. Machine reference: {reference_ms():.1f} ms of CPU for a "
        "1,000,000-step pure-Python loop.",
        "",
        f"Whole default set, median per-request time ({requests} requests x {repeats} repeats per cell; each "
        "request a fresh chat `Query` of natural-looking text, so the shared text features are "
        "computed every time):",
        "",
        "| prompt | after 10 queries | after 100,000 queries | ratio | CPU after 10 / 100,000 "
        "| state per client |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(out))
    for size in (256, 1024, 4096, 16384):
        m = measure(size, requests, repeats)
        label = f"{size} B" if size < 1024 else f"{size // 1024} KB"
        row = (
            f"| {label} | {m['young'] * 1e6:.1f} us | {m['old'] * 1e6:.1f} us "
            f"| {m['old'] / m['young']:.2f} | "
            f"{m['young_cpu'] * 1e6:.1f} / {m['old_cpu'] * 1e6:.1f} us | "
            f"{m['young_mem']:.0f} B / {m['old_mem']:.0f} B |"
        )
        print(row)
        out.append(row)
    feature_us, costs = per_detector(requests, max(3, repeats // 3))
    parts = [
        "",
        "At 1 KB, each part alone (CPU, mean, best of the repeats): the shared text features "
        f"(`detectors/_text.py`, computed once per request) {feature_us:.1f} us; "
        + ", ".join(f"`{name}` {us:.1f} us" for name, us in costs.items())
        + ".",
    ]
    once, full = memory_per_client(1_000, 1), memory_per_client(100, 130)
    parts += [
        "",
        f"Memory retained per client by the default set (tracemalloc, state and store entries): "
        f"**{once:,.0f} B** for a client seen once (1,000 clients), **{full:,.0f} B** once every window "
        "is full (100 clients x 130 queries).",
    ]
    print("\n".join(parts))
    out += parts
    if args.write:
        write_section(args.write, "\n".join(out))


if __name__ == "__main__":
    main()

"""Per-request cost of the default detector set (a script, not a test).

    python -m benchmarks.detectors            # the table in docs/detectors.md
    python -m benchmarks.detectors --quick    # fewer repeats
    python -m benchmarks.detectors --null     # the benign null of each detector's score

For each prompt size (256 B, 1 KB, 4 KB, 16 KB of natural-looking text) it builds a client with
10 earlier queries and one with 100,000 earlier queries, then times ``score()`` of every
detector of ``default_detectors()`` on fresh prompts of that size (each request is a new
:class:`Query`, so the shared text features are recomputed every time, as in production).
Reported: the median over repeats of the per-request wall time (``time.perf_counter``; each
repeat times a few hundred requests) and CPU time (``time.process_time``), and the memory held
per client (``deep_sizeof`` of every detector's state).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from distillguard.detectors import Observation
from distillguard.detectors._state import deep_sizeof
from distillguard.detectors.defaults import default_detectors
from distillguard.identity import Identity
from distillguard.query import Query, parse_query

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


def _reference_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop, to compare machines (best of 5)."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i & 7
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--null", action="store_true", help="print the benign null instead")
    args = parser.parse_args()
    if args.null:
        null()
        return
    requests, repeats = (100, 5) if args.quick else (300, 15)
    names = ", ".join(d.name for d in default_detectors())
    print(f"default detectors: {names}")
    print(f"machine reference: {_reference_ms():.1f} ms for a 1,000,000-step pure-Python loop (CPU time)")
    print(f"{requests} requests x {repeats} repeats per cell; median per-request time\n")
    print(
        "| prompt | after 10 queries | after 100,000 queries | ratio "
        "| CPU after 10 / 100,000 | state per client |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in (256, 1024, 4096, 16384):
        m = measure(size, requests, repeats)
        label = f"{size} B" if size < 1024 else f"{size // 1024} KB"
        print(
            f"| {label} | {m['young'] * 1e6:.1f} us | {m['old'] * 1e6:.1f} us "
            f"| {m['old'] / m['young']:.2f} | "
            f"{m['young_cpu'] * 1e6:.1f} / {m['old_cpu'] * 1e6:.1f} us | "
            f"{m['young_mem']:.0f} B / {m['old_mem']:.0f} B |"
        )


if __name__ == "__main__":
    main()

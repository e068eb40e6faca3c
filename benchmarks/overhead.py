"""In-process cost of distillguard per request, against the same app unguarded, in one run.

Run from the repository root::

    python -m benchmarks.overhead                  # print the tables
    python -m benchmarks.overhead --write docs/benchmarks.md

Each app is called directly (ASGI: a prepared scope and a ``receive`` that returns the body;
WSGI: a prepared environ and a no-op ``start_response``), so the figures are the CPU cost of the
app and the middleware alone, with no server and no network. Bare and guarded apps are measured
alternately, ``--repeats`` times ``--requests`` requests each after a warm-up; the tables give the
median and the min-max of the repeats. Compare ratios measured in the same run: absolute times
drift between runs on shared machines.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _apps

START = "<!-- overhead:start -->"
END = "<!-- overhead:end -->"


@dataclass
class Pair:
    """A bare app and its guarded twin, measured alternately."""

    label: str
    bare: Callable[[int], float]
    guarded: Callable[[int], float]
    bare_runs: list[float] = field(default_factory=list)
    guarded_runs: list[float] = field(default_factory=list)


def _asgi_runner(loop: asyncio.AbstractEventLoop, app: Any, scopes: list[dict[str, Any]], body: bytes):  # type: ignore[no-untyped-def]
    def run(n: int) -> float:
        return loop.run_until_complete(_apps.run_asgi(app, scopes, body, n)) / n / 1000

    return run


def _wsgi_runner(app: Any, environs: list[dict[str, Any]], body: bytes):  # type: ignore[no-untyped-def]
    def run(n: int) -> float:
        return _apps.run_wsgi(app, environs, body, n) / n / 1000

    return run


def _measure(pairs: list[Pair], requests: int, repeats: int, warmup: int) -> None:
    for pair in pairs:
        pair.bare(warmup)
        pair.guarded(warmup)
    for _ in range(repeats):
        for pair in pairs:
            gc.collect()
            pair.bare_runs.append(pair.bare(requests))
            gc.collect()
            pair.guarded_runs.append(pair.guarded(requests))


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _overhead_table(pairs: list[Pair]) -> str:
    lines = [
        "| stack | bare us/request | guarded us/request | overhead us (median, min-max) | guarded/bare |",
        "|---|---|---|---|---|",
    ]
    for pair in pairs:
        diffs = [g - b for b, g in zip(pair.bare_runs, pair.guarded_runs, strict=True)]
        ratio = statistics.median(pair.guarded_runs) / statistics.median(pair.bare_runs)
        lines.append(
            f"| {pair.label} | {_fmt(pair.bare_runs)} | {_fmt(pair.guarded_runs)} | "
            f"**{statistics.median(diffs):.1f}** ({min(diffs):.1f}-{max(diffs):.1f}) | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def _clients_section(loop: asyncio.AbstractEventLoop, body: bytes, requests: int, repeats: int) -> str:
    """CPU per request with 1 client against 10,000 distinct clients, and memory per client."""
    provider = _apps.tracer_provider()
    detectors = _apps.detector_sets()["trivial detector"]
    guard = _apps.make_guard(provider, detectors)
    app = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard)
    one = [_apps.asgi_scope(_apps.token("client-0"), body)]
    many = [_apps.asgi_scope(_apps.token(f"client-{i}"), body) for i in range(10_000)]
    run_one = _asgi_runner(loop, app, one, body)
    run_many = _asgi_runner(loop, app, many, body)
    run_one(2000)
    run_many(len(many))  # every client seen once: tokens verified, counters created
    ones: list[float] = []
    manys: list[float] = []
    for _ in range(repeats):
        gc.collect()
        ones.append(run_one(requests))
        gc.collect()
        manys.append(run_many(requests))
    ratio = statistics.median(manys) / statistics.median(ones)

    # memory: a fresh guard, then 10,000 new clients one request each
    guard2 = _apps.make_guard(provider, detectors)
    app2 = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard2)
    fresh = [_apps.asgi_scope(_apps.token(f"other-{i}"), body) for i in range(10_000)]
    run_fresh = _asgi_runner(loop, app2, [one[0]], body)
    run_fresh(100)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    _asgi_runner(loop, app2, fresh, body)(len(fresh))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_client = grown / len(fresh)
    provider.shutdown()
    return "\n".join(
        [
            "| clients | guarded raw ASGI us/request (median, min-max) |",
            "|---|---|",
            f"| 1 | {_fmt(ones)} |",
            f"| 10,000 distinct (cycled) | {_fmt(manys)} |",
            "",
            f"CPU per request, 10,000 clients / 1 client: **{ratio:.2f}x** (target: within 1.10x).",
            f"Memory retained per tracked client (tracemalloc, 10,000 new clients, one request each;"
            f" token cache, limit counters, span id cache and detector state together):"
            f" **{per_client:,.0f} B** (target: <= 4 KB).",
        ]
    )


def build_pairs(
    loop: asyncio.AbstractEventLoop, body: bytes, detectors: list[Any], suffix: str
) -> list[Pair]:
    """The bare/guarded pairs for one detector set."""
    provider = _apps.tracer_provider()
    bearer = _apps.token()
    scopes = [_apps.asgi_scope(bearer, body)]
    environs = [_apps.wsgi_environ(bearer, body)]
    raw_guarded = _apps.DistillGuardMiddleware(
        _apps.raw_asgi_app, guard=_apps.make_guard(provider, detectors)
    )
    return [
        Pair(
            f"raw ASGI{suffix}",
            _asgi_runner(loop, _apps.raw_asgi_app, scopes, body),
            _asgi_runner(loop, raw_guarded, scopes, body),
        ),
        Pair(
            f"Starlette{suffix}",
            _asgi_runner(loop, _apps.starlette_app(), scopes, body),
            _asgi_runner(loop, _apps.guarded_starlette(_apps.make_guard(provider, detectors)), scopes, body),
        ),
        Pair(
            f"Flask (WSGI){suffix}",
            _wsgi_runner(_apps.flask_app().wsgi_app, environs, body),
            _wsgi_runner(_apps.guarded_flask(_apps.make_guard(provider, detectors)).wsgi_app, environs, body),
        ),
    ]


def machine() -> str:
    """A one-line description of the machine and interpreter."""
    return (
        f"{os.cpu_count()} CPUs (nproc), Python {platform.python_version()} ({platform.machine()},"
        f" {platform.system()})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--no-clients", action="store_true", help="skip the 10,000-client run")
    parser.add_argument("--write", metavar="MD", help="replace the overhead section of this file")
    args = parser.parse_args(argv)

    body = _apps.chat_body(args.body_bytes)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pairs: list[Pair] = []
    for name, detectors in _apps.detector_sets().items():
        pairs.extend(build_pairs(loop, body, detectors, f", {name}"))
    _measure(pairs, args.requests, args.repeats, args.warmup)

    command = " ".join(["python -m benchmarks.overhead", *(argv if argv is not None else sys.argv[1:])])
    parts = [
        f"Command: `{command}`",
        f"Machine: {machine()}; date: {datetime.date.today().isoformat()}.",
        f"Request: `POST {_apps.PATH}`, {len(body)}-byte chat body, HS256 JWT (one token reused),"
        f" two limit windows, one span per request (BatchSpanProcessor, discarding exporter);"
        f" {args.requests:,} requests x {args.repeats} repeats after {args.warmup:,} warm-up, bare and"
        " guarded alternated.",
        "",
        _overhead_table(pairs),
    ]
    if not args.no_clients:
        parts += [
            "",
            "### Many distinct clients",
            "",
            _clients_section(loop, body, args.requests, args.repeats),
        ]
    report = "\n".join(parts)
    print(report)
    if args.write:
        write_section(Path(args.write), report)


def write_section(path: Path, report: str) -> None:
    """Replace the generated section of ``path`` (or put it at the top, under the title)."""
    block = f"{START}\n{report}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        head, sep, rest = text.partition("\n")
        text = f"{head}{sep}\n{block}\n{rest}"
    path.write_text(text)


if __name__ == "__main__":
    main()

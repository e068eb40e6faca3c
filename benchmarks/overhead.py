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
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from . import _apps, _peers

START = "<!-- overhead:start -->"
END = "<!-- overhead:end -->"

Runner = Callable[[int], float]
"""Runs n requests, returns microseconds per request."""


@dataclass
class Pair:
    """A bare app and its guarded twin, measured alternately."""

    label: str
    bare: Runner
    guarded: Runner
    bare_runs: list[float] = field(default_factory=list)
    guarded_runs: list[float] = field(default_factory=list)

    @property
    def overheads(self) -> list[float]:
        return [g - b for b, g in zip(self.bare_runs, self.guarded_runs, strict=True)]


def asgi_runner(
    loop: asyncio.AbstractEventLoop, app: Any, scopes: list[dict[str, Any]], body: list[bytes]
) -> Runner:
    """A runner calling the ASGI ``app``."""

    def run(n: int) -> float:
        return loop.run_until_complete(_apps.run_asgi(app, scopes, body, n)) / n / 1000

    return run


def wsgi_runner(app: Any, environs: list[dict[str, Any]], body: list[bytes]) -> Runner:
    """A runner calling the WSGI ``app``."""

    def run(n: int) -> float:
        return _apps.run_wsgi(app, environs, body, n) / n / 1000

    return run


def measure(pairs: list[Pair], requests: int, repeats: int, warmup: int) -> None:
    """Warm every app up, then measure each pair's bare and guarded app alternately."""
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


def overhead_table(pairs: list[Pair], guarded: str = "guarded") -> str:
    """A markdown table: bare, guarded, overhead and ratio of each pair."""
    lines = [
        f"| app | bare us/request | {guarded} us/request | overhead us (median, min-max) | {guarded}/bare |",
        "|---|---|---|---|---|",
    ]
    for pair in pairs:
        diffs = pair.overheads
        ratio = statistics.median(pair.guarded_runs) / statistics.median(pair.bare_runs)
        lines.append(
            f"| {pair.label} | {_fmt(pair.bare_runs)} | {_fmt(pair.guarded_runs)} | "
            f"**{statistics.median(diffs):.1f}** ({min(diffs):.1f}-{max(diffs):.1f}) | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main_pairs(
    loop: asyncio.AbstractEventLoop, body: list[bytes], detectors: list[Any], suffix: str
) -> list[Pair]:
    """Bare and guarded raw ASGI, Starlette, raw WSGI and Flask apps, for one detector set."""
    provider = _apps.tracer_provider()
    bearer = _apps.token()
    scopes = [_apps.asgi_scope(bearer, body[0])]
    environs = [_apps.wsgi_environ(bearer, body[0])]

    def guard() -> _apps.Guard:
        return _apps.make_guard(provider, detectors)

    return [
        Pair(
            f"raw ASGI{suffix}",
            asgi_runner(loop, _apps.raw_asgi_app, scopes, body),
            asgi_runner(loop, _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard()), scopes, body),
        ),
        Pair(
            f"Starlette{suffix}",
            asgi_runner(loop, _apps.starlette_app(), scopes, body),
            asgi_runner(loop, _apps.guarded_starlette(guard()), scopes, body),
        ),
        Pair(
            f"raw WSGI{suffix}",
            wsgi_runner(_apps.raw_wsgi_app, environs, body),
            wsgi_runner(_apps.DistillGuardWSGIMiddleware(_apps.raw_wsgi_app, guard=guard()), environs, body),
        ),
        Pair(
            f"Flask{suffix}",
            wsgi_runner(_apps.flask_app().wsgi_app, environs, body),
            wsgi_runner(_apps.guarded_flask(guard()).wsgi_app, environs, body),
        ),
    ]


def instrumented_pairs(loop: asyncio.AbstractEventLoop, body: list[bytes]) -> list[Pair]:
    """The raw apps behind OpenTelemetry's contrib server middleware (one ``SERVER`` span per
    request; ``receive``/``send`` spans off), bare and guarded with the trivial detector: the
    guard's span a child of the server span (the default), or the server span enriched
    (``TelemetryConfig(span="enrich")``). Empty when the contrib middleware is not installed."""
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as ASGIServer
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WSGIServer
    except ImportError:
        return []
    provider = _apps.tracer_provider()
    bearer = _apps.token()
    scopes = [_apps.asgi_scope(bearer, body[0])]
    environs = [_apps.wsgi_environ(bearer, body[0])]
    detectors = [_apps.TrivialDetector()]

    def asgi(app: Any) -> Any:
        return ASGIServer(app, tracer_provider=provider, exclude_spans=["receive", "send"])

    def wsgi(app: Any) -> Any:
        return WSGIServer(app, tracer_provider=provider)

    pairs = []
    for mode, label in (("enrich", 'enriches it (`span="enrich"`)'), ("child", "adds a child span")):
        guard = _apps.make_guard(provider, detectors, span=mode)
        pairs.append(
            Pair(
                f"raw ASGI + OTel server span, trivial detector; the guard {label}",
                asgi_runner(loop, asgi(_apps.raw_asgi_app), scopes, body),
                asgi_runner(
                    loop, asgi(_apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard)), scopes, body
                ),
            )
        )
        pairs.append(
            Pair(
                f"raw WSGI + OTel server span, trivial detector; the guard {label}",
                wsgi_runner(wsgi(_apps.raw_wsgi_app), environs, body),
                wsgi_runner(
                    wsgi(_apps.DistillGuardWSGIMiddleware(_apps.raw_wsgi_app, guard=guard)), environs, body
                ),
            )
        )
    return pairs


def attribution_pairs(loop: asyncio.AbstractEventLoop, body: list[bytes]) -> list[Pair]:
    """The raw apps guarded with parts left out, to see where the overhead goes."""
    bearer = _apps.token()
    scopes = [_apps.asgi_scope(bearer, body[0])]
    environs = [_apps.wsgi_environ(bearer, body[0])]
    detectors = [_apps.TrivialDetector()]
    noop = NoOpTracerProvider()
    variants = {
        "JWT + query + detector (no limits, non-recording tracer)": (noop, ""),
        "+ two limit windows (non-recording tracer)": (noop, _apps.LIMITS),
        "+ SDK span (everything)": (_apps.tracer_provider(), _apps.LIMITS),
    }
    pairs = []
    for label, (provider, limits) in variants.items():
        guard = _apps.make_guard(provider, detectors, limits)
        pairs.append(
            Pair(
                f"raw ASGI: {label}",
                asgi_runner(loop, _apps.raw_asgi_app, scopes, body),
                asgi_runner(
                    loop, _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard), scopes, body
                ),
            )
        )
    for label, (provider, limits) in variants.items():
        guard = _apps.make_guard(provider, detectors, limits)
        pairs.append(
            Pair(
                f"raw WSGI: {label}",
                wsgi_runner(_apps.raw_wsgi_app, environs, body),
                wsgi_runner(
                    _apps.DistillGuardWSGIMiddleware(_apps.raw_wsgi_app, guard=guard), environs, body
                ),
            )
        )
    return pairs


def peer_pairs(loop: asyncio.AbstractEventLoop, body: list[bytes]) -> list[Pair]:
    """Bare Starlette and Flask against the peer stacks (performance.md), when installed."""
    if not _peers.available():
        return []
    provider = _apps.tracer_provider()
    bearer = _apps.token()
    scopes = [_apps.asgi_scope(bearer, body[0])]
    environs = [_apps.wsgi_environ(bearer, body[0])]
    return [
        Pair(
            "Starlette: AuthenticationMiddleware (PyJWT) + slowapi + OTel ASGI",
            asgi_runner(loop, _apps.starlette_app(), scopes, body),
            asgi_runner(loop, _peers.starlette_peer(provider), scopes, body),
        ),
        Pair(
            "Flask: PyJWT before_request + Flask-Limiter + OTel WSGI",
            wsgi_runner(_apps.flask_app().wsgi_app, environs, body),
            wsgi_runner(_peers.flask_peer(provider), environs, body),
        ),
    ]


def _memory_per_client(
    loop: asyncio.AbstractEventLoop, body: list[bytes], detectors: list[Any], clients: int
) -> tuple[float, str]:
    """Bytes retained per new client by a fresh guard (tracemalloc), and the largest parts."""
    provider = _apps.tracer_provider()
    app = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=_apps.make_guard(provider, detectors))
    fresh = [_apps.asgi_scope(_apps.token(f"other-{i}"), body[0]) for i in range(clients)]
    asgi_runner(loop, app, fresh[:1], body)(100)
    provider.force_flush()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asgi_runner(loop, app, fresh, body)(len(fresh))
    provider.force_flush()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    provider.shutdown()
    stats = after.compare_to(before, "filename")
    per_client = sum(stat.size_diff for stat in stats) / len(fresh)
    top = sorted(stats, key=lambda s: -s.size_diff)[:4]
    where = ", ".join(
        f"{Path(s.traceback[0].filename).parent.name}/{Path(s.traceback[0].filename).name}"
        f" {s.size_diff / len(fresh):,.0f}"
        for s in top
    )
    return per_client, where


def clients_section(loop: asyncio.AbstractEventLoop, body: list[bytes], requests: int, repeats: int) -> str:
    """CPU per request with 1 client against 10,000 distinct clients, and memory per client,
    for each detector set."""
    clients = 10_000
    provider = _apps.tracer_provider()
    tokens = [_apps.token(f"client-{i}") for i in range(clients)]
    one = [_apps.asgi_scope(tokens[0], body[0])]
    many = [_apps.asgi_scope(t, body[0]) for t in tokens]
    runs: dict[str, tuple[Runner, Runner, list[float], list[float]]] = {}
    for name, detectors in _apps.detector_sets().items():
        app = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=_apps.make_guard(provider, detectors))
        run_one, run_many = asgi_runner(loop, app, one, body), asgi_runner(loop, app, many, body)
        run_one(2_000)
        run_many(clients)  # every client seen once: tokens verified, counters and state created
        runs[name] = (run_one, run_many, [], [])
    for _ in range(repeats):
        for run_one, run_many, ones, manys in runs.values():
            gc.collect()
            ones.append(run_one(requests))
            gc.collect()
            manys.append(run_many(requests))
    provider.shutdown()
    lines = [
        "| detectors | 1 client us/request | 10,000 clients us/request | ratio (target <= 1.10) |"
        " memory per client, B (target <= 4,096) | largest parts, B per client |",
        "|---|---|---|---|---|---|",
    ]
    for name, (_, _, ones, manys) in runs.items():
        per_client, where = _memory_per_client(loop, body, _apps.detector_sets()[name], clients)
        ratio = statistics.median(manys) / statistics.median(ones)
        lines.append(
            f"| {name} | {_fmt(ones)} | {_fmt(manys)} | **{ratio:.2f}x** | **{per_client:,.0f}** | {where} |"
        )
    return "\n".join(
        [
            "Guarded raw ASGI app; the 10,000 clients each have their own token and are cycled, after"
            " one warm-up request each. Memory: a fresh guard, then 10,000 new clients with one request"
            " each, measured with tracemalloc (token cache, limit counters, detector state and"
            " telemetry caches together).",
            "",
            *lines,
        ]
    )


def machine() -> str:
    """A one-line description of the machine and interpreter."""
    system = f"{platform.system()} {platform.machine()}"
    return f"{os.cpu_count()} CPUs (nproc), Python {platform.python_version()} on {system}"


def commit() -> str:
    """The commit measured (and whether the tree had changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {head}{' with uncommitted changes' if dirty else ''}"


def versions() -> str:
    """The versions of the libraries measured."""
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "distillguard",
        "starlette",
        "flask",
        "limits",
        "pyjwt",
        "opentelemetry-sdk",
        "slowapi",
        "flask-limiter",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2_000)
    parser.add_argument("--body-bytes", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="main table only (no parts, peers, clients)")
    parser.add_argument("--write", metavar="MD", help="replace the overhead section of this markdown file")
    args = parser.parse_args(argv)

    body = _apps.chat_bodies(256, args.body_bytes)  # different prompts, one length
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    pairs: list[Pair] = []
    for name, detectors in _apps.detector_sets().items():
        pairs.extend(main_pairs(loop, body, detectors, f", {name}"))
    instrumented = instrumented_pairs(loop, body)
    parts = [] if args.quick else attribution_pairs(loop, body)
    peers = [] if args.quick else peer_pairs(loop, body)
    measure([*pairs, *instrumented, *parts, *peers], args.requests, args.repeats, args.warmup)

    command = " ".join(["python -m benchmarks.overhead", *(argv if argv is not None else sys.argv[1:])])
    out = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start;"
        f" {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {commit()}.",
        f"Versions: {versions()}.",
        "",
        f"Request: `POST {_apps.PATH}` with {len(body[0])}-byte OpenAI-style chat bodies"
        " (256 prompts, cycled) and an HS256 JWT"
        " (one token, reused); the guard verifies it, charges two limit windows"
        f" (`{_apps.LIMITS}`: never reached), parses the query, runs the detectors and records one span"
        " (SDK TracerProvider, BatchSpanProcessor, an exporter that drops spans)."
        f" {args.requests:,} requests x {args.repeats} repeats after {args.warmup:,} warm-up;"
        " bare and guarded apps alternate.",
        "",
        overhead_table(pairs),
    ]
    if instrumented:
        out += [
            "",
            "### Behind a server instrumentation",
            "",
            "The same raw apps behind OpenTelemetry's contrib server middleware (the `SERVER` span"
            " every instrumented deployment already pays for; `receive`/`send` spans off), bare and"
            " guarded: the guard's overhead when its span is a child of the server span (the"
            ' default) and when it enriches the server span instead (`TelemetryConfig(span="enrich")`).',
            "",
            overhead_table(instrumented),
        ]
    if parts:
        out += ["", "### Where the overhead goes", "", overhead_table(parts)]
    if peers:
        out += [
            "",
            "### The peer stacks, same run",
            "",
            "What users assemble today (performance reference): JWT check with PyJWT, a limiter on"
            " `limits`' memory storage, OpenTelemetry middleware with the same provider.",
            "",
            overhead_table(peers, "peer stack"),
        ]
    if not args.quick:
        out += ["", "### Many distinct clients", "", clients_section(loop, body, args.requests, args.repeats)]
    loop.close()
    asyncio.set_event_loop(None)
    report = "\n".join(out)
    print(report)
    if args.write:
        write_section(Path(args.write), report)


def write_section(path: Path, report: str) -> None:
    """Replace the generated section of ``path`` (or put it under the title)."""
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

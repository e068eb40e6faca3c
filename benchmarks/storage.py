"""Per-request guard overhead with the memory storage and with Redis, in one run, and the Redis
round trips each request costs.

Run from the repository root (starts its own ``redis-server`` on a free port unless
``--redis-url`` is given)::

    python -m benchmarks.storage                      # print the tables
    python -m benchmarks.storage --write docs/benchmarks.md

The apps are called directly (no server, no network between client and app); Redis is a local
``redis-server`` over loopback TCP. Bare app, guard on ``memory://`` and guard on ``redis://``
are measured alternately, ``--repeats`` times ``--requests`` requests each; the tables give
medians. Round trips are counted on the client (each command sent is one request/response on
the connection: nothing is pipelined) and cross-checked with the server's
``MONITOR`` (top-level commands only: calls made inside Lua scripts are left out). Requests
rotate over 1,000 client identities with realistic windows (``60/minute;1000/day``), so no
window fills and every request is admitted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from distillguard import (
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    JWTConfig,
    LimitConfig,
    Policy,
)
from distillguard.detectors.defaults import default_detectors

from . import _apps
from ._report import reference_ms, replace_section

START = "<!-- storage:start -->"
END = "<!-- storage:end -->"
LIMITS = "60/minute;1000/day"
"""Realistic windows; requests rotate over CLIENTS identities so no window ever fills."""
CLIENTS = 1000


# -- redis-server and counting -----------------------------------------------------------------


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """``url``, or a fresh ``redis-server`` on a free port (stopped afterwards)."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait()


class RoundTrips:
    """Counts commands sent by redis-py clients (sync and asyncio) in this process."""

    def __init__(self) -> None:
        self.count = 0
        self._patched: list[tuple[Any, Any]] = []

    def __enter__(self) -> RoundTrips:
        import redis.asyncio.connection as aconn
        import redis.connection as conn

        for cls in (conn.AbstractConnection, aconn.AbstractConnection):
            original = cls.send_packed_command
            self._patched.append((cls, original))
            cls.send_packed_command = self._wrap(original, asyncio.iscoroutinefunction(original))
        return self

    def _wrap(self, original: Any, is_async: bool) -> Any:
        counter = self

        if is_async:

            async def send_async(conn: Any, command: Any, *args: Any, **kw: Any) -> Any:
                counter.count += 1
                return await original(conn, command, *args, **kw)

            return send_async

        def send(conn: Any, command: Any, *args: Any, **kw: Any) -> Any:
            counter.count += 1
            return original(conn, command, *args, **kw)

        return send

    def __exit__(self, *exc: object) -> None:
        for cls, original in self._patched:
            cls.send_packed_command = original


def _port(url: str) -> str:
    match = re.search(r":(\d+)", url.split("//", 1)[1])
    return match.group(1) if match else "6379"


@contextmanager
def monitor(url: str) -> Iterator[dict[str, int]]:
    """Count the top-level commands the server receives (``MONITOR``; calls made inside Lua
    scripts are tagged ``lua`` and left out). A thread drains the output as it comes."""
    import threading

    counts: dict[str, int] = {}
    process = subprocess.Popen(["redis-cli", "-p", _port(url), "monitor"], stdout=subprocess.PIPE, text=True)
    pattern = re.compile(r'[\d.]+ \[(\d+ [^\]]+)\] "([^"]+)"')
    live = [True]

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            match = pattern.match(line)
            if live[0] and match and "lua" not in match.group(1):
                command = match.group(2).lower()
                if command not in ("info", "monitor", "ping"):
                    counts[command] = counts.get(command, 0) + 1

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    time.sleep(0.3)
    try:
        yield counts
        time.sleep(0.5)
    finally:
        live[0] = False
        process.terminate()
        process.wait()
        reader.join(timeout=5)


# -- apps ------------------------------------------------------------------------------------


def make_guard(
    storage_uri: str,
    strategy: str = "moving-window",
    prefix: str | None = None,
    *,
    detectors: bool = False,
    shared: bool = True,
    concurrency: int | None = None,
) -> Guard:
    """A guard with JWT, the default two windows (never reached) and no detectors (or the
    default set, its state shared through Redis unless ``shared`` is false), and a
    ``concurrency`` cap (never reached) when given."""
    return Guard(
        jwt=JWTConfig(algorithms=["HS256"], key=_apps.SECRET, issuer=_apps.ISSUER, audience=_apps.AUDIENCE),
        limits=LimitConfig(
            default=LIMITS,
            storage_uri=storage_uri,
            strategy=strategy,
            key_prefix=prefix or f"bench{time.time()}",
            concurrency=concurrency,
        ),
        detectors=default_detectors() if detectors else (),
        policy=Policy(shared_state=shared),
        tracer_provider=NoOpTracerProvider(),
    )


def taking_turns(first: Any, second: Any) -> Any:
    """An ASGI or WSGI app that hands requests to ``first`` and ``second`` in turn (two replicas
    behind a round-robin balancer): the runners cycle over ``CLIENTS`` clients, so each client's
    requests alternate between the two."""
    turn = [0]
    apps = (first, second)
    if isinstance(first, DistillGuardMiddleware):

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            turn[0] += 1
            await apps[(turn[0] // CLIENTS) % 2](scope, receive, send)

        return asgi

    def wsgi(environ: Any, start_response: Any) -> Any:
        turn[0] += 1
        return apps[(turn[0] // CLIENTS) % 2](environ, start_response)

    return wsgi


async def bare_asgi(scope: Any, receive: Any, send: Any) -> None:
    """The unguarded model stand-in."""
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": _apps.RESPONSE})


def bare_wsgi(environ: Any, start_response: Any) -> Any:
    """The unguarded model stand-in (WSGI)."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("content-type", "application/json")])
    return [_apps.RESPONSE]


TOKENS = [_apps.token(f"client-{i}") for i in range(CLIENTS)]


def asgi_runner(
    loop: asyncio.AbstractEventLoop, app: Any, body: bytes | list[bytes]
) -> Callable[[int], float]:
    bodies = body if isinstance(body, list) else [body]
    scopes = [
        {
            "type": "http",
            "method": "POST",
            "path": _apps.PATH,
            "headers": [
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(bodies[0])).encode()),  # the variants are the same size
            ],
            "client": ("10.0.0.1", 1),
        }
        for token in TOKENS
    ]
    turn = [0]

    async def run(n: int) -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": bodies[turn[0] % len(bodies)], "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        start = time.perf_counter()
        for _ in range(n):
            turn[0] += 1
            await app(dict(scopes[turn[0] % CLIENTS]), receive, send)
        return (time.perf_counter() - start) / n * 1e6

    return lambda n: loop.run_until_complete(run(n))


def wsgi_runner(app: Any, body: bytes | list[bytes]) -> Callable[[int], float]:
    import io

    bodies = body if isinstance(body, list) else [body]
    turn = [0]

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            turn[0] += 1
            token = TOKENS[turn[0] % CLIENTS]
            body = bodies[turn[0] % len(bodies)]
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": _apps.PATH,
                "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_AUTHORIZATION": f"Bearer {token}",
                "REMOTE_ADDR": "10.0.0.1",
                "wsgi.input": io.BytesIO(body),
            }
            result = app(environ, lambda status, headers, exc_info=None: None)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return (time.perf_counter() - start) / n * 1e6

    return run


# -- measurement -----------------------------------------------------------------------------


def overhead(url: str, requests: int, repeats: int) -> list[tuple[str, float, float, float, float]]:
    """``(adapter, bare us, memory overhead us, redis overhead us, redis with a concurrency cap
    overhead us)`` per adapter."""
    body = _apps.chat_body(1024)
    loop = asyncio.new_event_loop()
    rows = []
    adapters: list[tuple[str, dict[str, Callable[[int], float]]]] = [
        (
            "ASGI",
            {
                "bare": asgi_runner(loop, bare_asgi, body),
                "memory": asgi_runner(
                    loop, DistillGuardMiddleware(bare_asgi, guard=make_guard("memory://")), body
                ),
                "redis": asgi_runner(loop, DistillGuardMiddleware(bare_asgi, guard=make_guard(url)), body),
                "cap": asgi_runner(
                    loop, DistillGuardMiddleware(bare_asgi, guard=make_guard(url, concurrency=8)), body
                ),
            },
        ),
        (
            "WSGI",
            {
                "bare": wsgi_runner(bare_wsgi, body),
                "memory": wsgi_runner(
                    DistillGuardWSGIMiddleware(bare_wsgi, guard=make_guard("memory://")), body
                ),
                "redis": wsgi_runner(DistillGuardWSGIMiddleware(bare_wsgi, guard=make_guard(url)), body),
                "cap": wsgi_runner(
                    DistillGuardWSGIMiddleware(bare_wsgi, guard=make_guard(url, concurrency=8)), body
                ),
            },
        ),
    ]
    for name, runners in adapters:
        runs: dict[str, list[float]] = {k: [] for k in runners}
        for runner in runners.values():
            runner(max(50, requests // 10))  # warm-up (connections, scripts, caches)
        for _ in range(repeats):
            for key, runner in runners.items():
                runs[key].append(runner(requests))
        bare = statistics.median(runs["bare"])
        rows.append(
            (
                name,
                bare,
                statistics.median(runs["memory"]) - bare,
                statistics.median(runs["redis"]) - bare,
                statistics.median(runs["cap"]) - bare,
            )
        )
    loop.close()
    return rows


def detector_overhead(url: str, requests: int, repeats: int) -> list[tuple[str, float, list[float]]]:
    """``(adapter, bare us, [memory, redis per process, redis shared, two replicas shared]
    overhead us)`` with the default detectors; every request a new prompt."""
    bodies = [_apps.chat_body(1024, variant=i + 1) for i in range(257)]  # 257: prime to the clients
    loop = asyncio.new_event_loop()
    rows = []
    for name in ("ASGI", "WSGI"):
        asgi = name == "ASGI"
        wrap: Any = DistillGuardMiddleware if asgi else DistillGuardWSGIMiddleware
        bare: Any = bare_asgi if asgi else bare_wsgi
        pair = f"pair{time.time()}"
        apps = {
            "bare": bare,
            "memory": wrap(bare, guard=make_guard("memory://", detectors=True)),
            "local": wrap(bare, guard=make_guard(url, detectors=True, shared=False)),
            "shared": wrap(bare, guard=make_guard(url, detectors=True)),
            "turns": taking_turns(
                wrap(bare, guard=make_guard(url, prefix=pair, detectors=True)),
                wrap(bare, guard=make_guard(url, prefix=pair, detectors=True)),
            ),
        }
        runners: dict[str, Callable[[int], float]] = {}
        for key, app in apps.items():
            runners[key] = asgi_runner(loop, app, bodies) if asgi else wsgi_runner(app, bodies)
        runs: dict[str, list[float]] = {k: [] for k in runners}
        for runner in runners.values():
            runner(max(50, requests // 10))
        for _ in range(repeats):
            for key, runner in runners.items():
                runs[key].append(runner(requests))
        base = statistics.median(runs["bare"])
        extra = [statistics.median(runs[k]) - base for k in ("memory", "local", "shared", "turns")]
        rows.append((name, base, extra))
    loop.close()
    return rows


def round_trips(url: str, requests: int) -> list[tuple[str, str, float, str]]:
    """``(adapter, strategy, round trips per request, top-level commands per request)``."""
    body = _apps.chat_body(1024)
    rows = []
    variants = [(s, False, False) for s in ("moving-window", "fixed-window", "sliding-window-counter")]
    variants += [("moving-window", True, False), ("sliding-window-counter", True, False)]
    variants += [("moving-window", False, True)]
    for strategy, detectors, capped in variants:
        for adapter in ("ASGI", "WSGI"):
            guard = make_guard(url, strategy, detectors=detectors, concurrency=8 if capped else None)
            loop = asyncio.new_event_loop()
            if adapter == "ASGI":
                run = asgi_runner(loop, DistillGuardMiddleware(bare_asgi, guard=guard), body)
            else:
                run = wsgi_runner(DistillGuardWSGIMiddleware(bare_wsgi, guard=guard), body)
            run(5)  # load scripts, open connections
            with monitor(url) as seen, RoundTrips() as trips:
                run(requests)
            loop.close()
            commands = ", ".join(f"{k} {v / requests:g}" for k, v in sorted(seen.items()))
            label = f"{strategy}, default detectors (shared state)" if detectors else strategy
            if capped:
                label = f"{strategy}, concurrency cap (shared leases)"
            rows.append((adapter, label, trips.count / requests, commands))
    return rows


HISTORY = (40, 70.0, 900)
"""A long-lived client's windows before each measured request: 40 entries spread over the last
70 s in its minute window (a few have left it) and 900 over the last day in its day window."""


def server_time(url: str, rounds: int = 3) -> list[tuple[str, float, float]]:
    """``(charging, Redis server us per request, script calls per request)`` for ``CLIENTS``
    clients with a long history (:data:`HISTORY`), one request each: the guard's script, and
    ``limits``' own moving-window strategy charging and reading the same two windows (``hit``
    then ``get_window_stats``, per window). The server's time is its ``INFO commandstats``
    total; every request is admitted."""
    from limits import parse_many
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    items = parse_many(LIMITS)
    spans = ((items[0], HISTORY[0], HISTORY[1]), (items[1], HISTORY[2], 86_000.0))

    def fill(prefix: str) -> None:
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for i in range(CLIENTS):
            for item, entries, span in spans:
                key = f"{prefix}:" + item.key_for("c", "default", f"client-{i}")
                pipe.delete(key)
                pipe.rpush(key, *[now - 1 - j * span / entries for j in range(entries)])
                pipe.expire(key, item.get_expiry())
        pipe.execute()

    def measure(run: Callable[[], object]) -> tuple[float, float]:
        client.config_resetstat()
        run()
        stats = client.info("commandstats")
        skip = ("cmdstat_config", "cmdstat_info")
        usec = sum(v["usec"] for k, v in stats.items() if not k.startswith(skip))
        calls = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
        return usec / CLIENTS, calls / CLIENTS

    runs: dict[str, list[tuple[float, float]]] = {"guard": [], "limits": []}
    for r in range(rounds):
        prefix = f"history{r}{time.time()}"
        guard = make_guard(url, prefix=prefix)
        app = wsgi_runner(DistillGuardWSGIMiddleware(bare_wsgi, guard=guard), _apps.chat_body(1024))
        app(1)  # loads the script
        fill(prefix)
        runs["guard"].append(measure(lambda app=app: app(CLIENTS)))  # each client once
        limiter = MovingWindowRateLimiter(storage_from_string(url, key_prefix=prefix))

        def plain(limiter: MovingWindowRateLimiter = limiter) -> None:
            for i in range(CLIENTS):
                for item, _, _ in spans:
                    limiter.hit(item, "c", "default", f"client-{i}")
                    limiter.get_window_stats(item, "c", "default", f"client-{i}")

        plain()  # loads the scripts
        fill(prefix)
        runs["limits"].append(measure(plain))
    client.close()
    return [(name, statistics.median(u for u, _ in values), values[0][1]) for name, values in runs.items()]


def parsers(url: str, calls: int = 2000, repeats: int = 5) -> list[tuple[str, float, float]]:
    """``(parser, sync client CPU us, asyncio client CPU us)`` per call of the charging script
    (two moving windows), redis-py with its pure-Python reply parser and with hiredis (the
    ``redis`` extra installs it); alternated, medians of ``repeats``."""
    import redis.asyncio as redis_aio
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _HiredisParser, _RESP2Parser

    import redis as redis_py
    from distillguard.limiting._script import CHARGE_WINDOWS_LUA

    args = ("1", "m", "60000", "60", "1", "m", "1000000", "86400", "1")
    loop = asyncio.new_event_loop()
    runners: dict[tuple[str, str], Callable[[], float]] = {}
    for name, sync_parser, async_parser in (
        ("pure Python", _RESP2Parser, _AsyncRESP2Parser),
        ("hiredis", _HiredisParser, _AsyncHiredisParser),
    ):
        pool = redis_py.ConnectionPool.from_url(url, parser_class=sync_parser)
        client = redis_py.Redis(connection_pool=pool)
        aclient = redis_aio.Redis(
            connection_pool=redis_aio.ConnectionPool.from_url(url, parser_class=async_parser)
        )
        sha = client.script_load(CHARGE_WINDOWS_LUA)

        def sync_run(client: Any = client, sha: str = sha) -> float:
            start = time.process_time()
            for i in range(calls):
                client.evalsha(sha, 2, f"parse:a{i % 100}", f"parse:b{i % 100}", *args)
            return (time.process_time() - start) / calls * 1e6

        async def calls_async(aclient: Any, sha: str) -> None:
            for i in range(calls):
                await aclient.evalsha(sha, 2, f"parse:a{i % 100}", f"parse:b{i % 100}", *args)

        def async_run(aclient: Any = aclient, sha: str = sha) -> float:
            start = time.process_time()
            loop.run_until_complete(calls_async(aclient, sha))
            return (time.process_time() - start) / calls * 1e6

        runners[(name, "sync")] = sync_run
        runners[(name, "async")] = async_run
    times: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for run in runners.values():
        run()  # warm-up
    for _ in range(repeats):
        for key, run in runners.items():
            times[key].append(run())
    loop.close()
    return [
        (name, statistics.median(times[(name, "sync")]), statistics.median(times[(name, "async")]))
        for name in ("pure Python", "hiredis")
    ]


def report(url: str, requests: int, repeats: int) -> str:
    """The Markdown section."""
    over = overhead(url, requests, repeats)
    trips = round_trips(url, 200)
    server = server_time(url)
    parsing = parsers(url)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs "
        f"(load average {load:.1f} at the start: absolute times vary with the machine's load; "
        f"{reference_ms():.1f} ms of CPU for a 1,000,000-step pure-Python loop)"
    )
    lines = [
        "## Storage",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine} with `python -m benchmarks.storage` "
        f"({repeats} x {requests} requests per app, medians; Redis {redis_version(url)} on loopback TCP). "
        "The guard verifies an HS256 JWT (cached) and charges two moving windows (`60/minute;1000/day`, "
        "1,000 rotating clients, never full); no detectors (first table), no-op tracer.",
        "",
        "| Adapter | Bare app (us/request) | Guard on `memory://` (+us) | Guard on `redis://` (+us) "
        "| `redis://` with a concurrency cap (+us) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, bare, memory, redis, capped in over:
        lines.append(f"| {name} | {bare:.1f} | +{memory:.1f} | +{redis:.1f} | +{capped:.1f} |")
    lines += [
        "",
        "The same with the default detector set (every request a new 1 KB prompt): on `memory://`; on "
        "`redis://` with the detector state per process (`Policy(shared_state=False)`); shared "
        "through Redis (the default), one replica; and two replicas taking turns for each client "
        "(every request reads and decodes the state the other replica wrote):",
        "",
        "| Adapter | Bare app (us/request) | `memory://` (+us) | `redis://`, state per process (+us) "
        "| `redis://`, shared state (+us) | two replicas taking turns (+us) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, bare, extra in detector_overhead(url, requests, repeats):
        lines.append(f"| {name} | {bare:.1f} | " + " | ".join(f"+{v:.1f}" for v in extra) + " |")
    lines += [
        "",
        "Redis round trips per admitted request (two windows, RateLimit fields on), counted on the "
        "client, and the top-level commands the server received per request (`MONITOR`, without the "
        "calls made inside Lua scripts):",
        "",
        "| Adapter | Strategy | Round trips | Commands per request |",
        "|---|---|---:|---|",
    ]
    for adapter, strategy, count, commands in trips:
        lines.append(f"| {adapter} | {strategy} | {count:g} | {commands} |")
    lines += [
        "",
        "The Redis server's own time per request (its `INFO commandstats`), for 1,000 clients with a long "
        f"history, one request each: {HISTORY[0]} entries over the last {HISTORY[1]:.0f} s in the minute "
        f"window (a few of them expired) and {HISTORY[2]} over the last day in the day window. The "
        "guard's script against `limits`' own moving-window strategy on the same windows (`hit`, then "
        "`get_window_stats` for the RateLimit fields, per window); median of 3 rounds:",
        "",
        "| Charging | Server us per request | Script calls per request |",
        "|---|---:|---:|",
    ]
    for name, usec, calls in server:
        label = "the guard's script" if name == "guard" else "`limits`' MovingWindowRateLimiter"
        lines.append(f"| {label} | {usec:.1f} | {calls:g} |")
    lines += [
        "",
        "The client's CPU per round trip of the charging script (two moving windows), with redis-py's "
        "pure-Python reply parser and with hiredis (its C parser and command packer, which the "
        "`redis` extra installs), alternated in one process; medians of 5 x 2,000 calls:",
        "",
        "| redis-py parser | sync client us per call | asyncio client us per call |",
        "|---|---:|---:|",
    ]
    for name, sync_us, async_us in parsing:
        lines.append(f"| {name} | {sync_us:.1f} | {async_us:.1f} |")
    lines += [
        "",
        "Moving and fixed windows on a single Redis (or Sentinel) cost one round trip per request: one "
        "script checks every window of the request, charges them all or none, and returns each window's"
        " remaining quota and reset time (`distillguard/limiting/_script.py`). On a Redis Cluster a "
        "client's own windows share its hash tag (one slot) and are charged by the same script in one "
        'round trip; shared windows (tenant, `per="all"`) and the sliding window counter are charged '
        "window by window through `limits`: two round trips per window (charge, then read the window "
        "for the RateLimit fields). With the detectors' state shared, the state is read in the windows'"
        " script (an empty answer when this replica is up to date) and written back after the detectors"
        " ran: two round trips per request; one more (the read) where the windows are charged through "
        "`limits`. A concurrency cap shared across replicas adds two: the lease is taken after the "
        "windows (a refused request takes none) and given back after the answer. The script finds how "
        "many entries of a moving window still count with one read of the oldest entry when none has "
        "expired (a binary search otherwise), and drops the expired entries when it charges.",
    ]
    return "\n".join(lines)


def redis_version(url: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-p", _port(url), "INFO", "server"], capture_output=True, text=True
    ).stdout
    match = re.search(r"redis_version:(\S+)", out)
    return match.group(1) if match else "?"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the storage section of ``path``, leaving the rest alone."""
    replace_section(path, START, END, section)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--redis-url", default=None, help="an existing server (default: start one)")
    parser.add_argument("--write", type=Path, default=None, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    with redis_server(args.redis_url) as url:
        section = report(url, args.requests, args.repeats)
    print(section)
    if args.write is not None:
        write_section(args.write, section)


if __name__ == "__main__":
    main(sys.argv[1:])

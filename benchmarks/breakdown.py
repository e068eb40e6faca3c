"""What each step of one guarded request costs, each step timed alone (CPU time of the process,
best of the repeats).

Run from the repository root::

    python -m benchmarks.breakdown

The steps are those the ASGI middleware takes for the request of :mod:`benchmarks.overhead`
(the WSGI middleware takes the same steps with the sync performer). The sum is close to, not
equal to, the measured overhead: timed alone, each step runs with warm caches.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import timeit
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from distillguard.exchange import Exchange
from distillguard.flow import HitLimit, RunDetector
from distillguard.limiting.headers import ratelimit_fields
from distillguard.query import parse_query
from distillguard.request import GuardRequest

from . import _apps


def guard_request(authorization: str, body: bytes) -> GuardRequest:
    """The benchmark's chat request as an adapter hands it to the guard (stamped now)."""
    return GuardRequest(
        method="POST",
        path=_apps.PATH,
        authorization=authorization,
        content_type="application/json",
        body=body,
        client_address="127.0.0.1",
        user_agent="bench/1.0",
        timestamp=time.time(),
    )


def _best(fn: Callable[[], object], number: int, repeats: int) -> float:
    for _ in range(min(number, 2_000)):
        fn()
    return min(timeit.repeat(fn, number=number, repeat=repeats, timer=time.process_time)) / number * 1e6


def _best_async(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], Coroutine[Any, Any, object]], number: int, repeats: int
) -> float:
    async def batch(n: int) -> float:
        start = time.process_time()
        for _ in range(n):
            await fn()
        return time.process_time() - start

    loop.run_until_complete(batch(min(number, 2_000)))
    return min(loop.run_until_complete(batch(number)) for _ in range(repeats)) / number * 1e6


def steps(number: int, repeats: int) -> list[tuple[str, float]]:
    """``(step, microseconds)`` for each step of one guarded request."""
    loop = asyncio.new_event_loop()
    body = _apps.chat_body()
    bearer = _apps.token()
    scope = _apps.asgi_scope(bearer, body)
    guard = _apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()])
    quiet = _apps.make_guard(NoOpTracerProvider(), [_apps.TrivialDetector()])
    perform = guard.async_performer()
    perform_sync = guard.sync_performer()

    request: Callable[[], GuardRequest] = functools.partial(guard_request, f"Bearer {bearer}", body)

    req = request()
    assert guard.verifier is not None
    identity = guard.verifier.verify(bearer)
    query = parse_query(body, "application/json")
    checks = guard.plan.checks_for(identity, _apps.PATH, query)
    decision = loop.run_until_complete(guard.adecide(req, perform))
    detector = guard.detectors[0]
    observation_effect: RunDetector | None = None

    def flow_effects() -> None:
        nonlocal observation_effect
        flow = guard.flow(req)
        effect = next(flow)
        try:
            while True:
                if isinstance(effect, RunDetector):
                    observation_effect = effect
                effect = flow.send(loop.run_until_complete(perform(effect)))
        except StopIteration:
            return

    flow_effects()
    assert observation_effect is not None
    seen = observation_effect

    async def limits_async() -> None:
        for check in checks:
            await perform(HitLimit(check, time.time()))

    def limits_sync() -> None:
        for check in checks:
            perform_sync(HitLimit(check, time.time()))

    def lifecycle(g: Any) -> Callable[[], None]:
        def run() -> None:
            exchange = Exchange(g, req, scope, None)
            exchange.decided(decision)
            exchange.response_start(200)
            exchange.response_body(_apps.RESPONSE)
            exchange.finish()

        return run

    out = [
        ("GuardRequest from the request", _best(request, number, repeats)),
        ("JWT verification (cached token)", _best(lambda: guard.verifier.verify(bearer), number, repeats)),  # type: ignore[union-attr]
        (
            "parse_query, 1 KB chat body",
            _best(lambda: parse_query(body, "application/json"), number, repeats),
        ),
        (
            "plan.checks_for",
            _best(lambda: guard.plan.checks_for(identity, _apps.PATH, query), number, repeats),
        ),
        (f"{len(checks)} limit windows, async performer", _best_async(loop, limits_async, number, repeats)),
        (f"{len(checks)} limit windows, sync performer", _best(limits_sync, number, repeats)),
        ("trivial detector", _best(lambda: detector.score(seen.observation), number, repeats)),
        ("RateLimit fields", _best(lambda: ratelimit_fields(decision.limits, time.time()), number, repeats)),
        (
            "whole pipeline (adecide), all of the above",
            _best_async(loop, lambda: guard.adecide(req, perform), number, repeats),
        ),
        ("span lifecycle, SDK provider (Exchange start to finish)", _best(lifecycle(guard), number, repeats)),
        ("span lifecycle, non-recording tracer", _best(lifecycle(quiet), number, repeats)),
    ]
    out.extend(request_log_cost(guard, req, decision, number, repeats))
    out.extend(busy_window(number))
    out.extend(detector_costs(loop, number=min(number, 3_000)))
    loop.close()
    return out


def request_log_steps(number: int, repeats: int) -> list[tuple[str, float]]:
    """The whole pipeline (the baseline) and :func:`request_log_cost`, in one run."""
    loop = asyncio.new_event_loop()
    body, bearer = _apps.chat_body(), _apps.token()
    guard = _apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()])
    perform = guard.async_performer()
    req = guard_request(f"Bearer {bearer}", body)
    decision = loop.run_until_complete(guard.adecide(req, perform))
    try:
        base = (
            "whole pipeline (adecide)",
            _best_async(loop, lambda: guard.adecide(req, perform), number, repeats),
        )
        return [base, *request_log_cost(guard, req, decision, number, repeats)]
    finally:
        loop.close()


def request_log_cost(
    guard: Any, req: GuardRequest, decision: Any, number: int, repeats: int
) -> list[tuple[str, float]]:
    """What recording each request costs (``RequestLog`` as the ``on_decision`` hook, writing
    to ``/dev/null``): formatting the line and queueing it, and with the writer thread's own
    CPU (process time counts every thread), the line written."""
    from distillguard.request_log import RequestLog

    log = RequestLog(os.devnull, queue_size=1_000_000)

    def record() -> None:
        log(decision, req)

    def record_and_write() -> None:
        for _ in range(100):
            log(decision, req)
        log.flush()

    try:
        return [
            ("RequestLog line (format only)", _best(lambda: log.line(decision, req), number, repeats)),
            ("RequestLog on_decision (format and queue)", _best(record, number, repeats)),
            (
                "RequestLog on_decision and the writer thread (written to /dev/null)",
                _best(record_and_write, max(1, number // 100), repeats) / 100,
            ),
        ]
    finally:
        log.close()


def busy_window(number: int) -> list[tuple[str, float]]:
    """Mean CPU time of one charge of the in-memory moving window at 1,000 and at 100,000
    entries (a shared window of 100,000 requests a minute, running at that rate: every charge
    adds one entry and one leaves), on a stepped clock."""
    from distillguard.limiting._table import BoundedTable

    out = []
    for size in (1_000, 100_000):
        now = [0.0]
        table = BoundedTable(16, clock=lambda now=now: now[0])
        step = 60.0 / size
        for _ in range(size):
            now[0] += step
            table.charge_moving_window("all", 10**9, 60, 1, True)
        start = time.process_time()
        for _ in range(number):
            now[0] += step
            table.charge_moving_window("all", 10**9, 60, 1, True)
        out.append(
            (f"moving window charge, memory, {size:,} entries", (time.process_time() - start) / number * 1e6)
        )
    return out


def window_memory() -> list[tuple[int, float]]:
    """Bytes one in-memory moving window holds (tracemalloc, the table's entry included) with 1,
    2 and 1,000 entries of one request each: ``(entries, bytes per window)``."""
    import tracemalloc

    from distillguard.limiting._table import BoundedTable

    out = []
    for entries in (1, 2, 1_000):
        now = [0.0]
        table = BoundedTable(100_000, clock=lambda now=now: now[0])
        windows = 1_000 if entries < 1_000 else 100
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for w in range(windows):
            for _ in range(entries):
                now[0] += 0.001
                table.charge_moving_window(f"client-{w}", 10**6, 86_400, 1, True)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out.append((entries, used / windows))
    return out


def detector_costs(loop: asyncio.AbstractEventLoop, number: int) -> list[tuple[str, float]]:
    """Mean CPU time of each default detector's ``score`` over ``number`` requests of one client
    (after as many warm-up requests), 256 different prompts cycled."""
    sets = _apps.detector_sets()
    if "default detectors" not in sets:
        return []
    guard = _apps.make_guard(NoOpTracerProvider(), sets["default detectors"])
    perform = guard.async_performer()
    bodies = _apps.chat_bodies(256)
    authorization = f"Bearer {_apps.token()}"
    spent: dict[str, float] = {}
    for i in range(2 * number):
        req = guard_request(authorization, bodies[i % len(bodies)])
        flow = guard.flow(req)
        try:
            effect = next(flow)
            while True:
                if isinstance(effect, RunDetector):
                    start = time.process_time()
                    result = effect.detector.score(effect.observation)
                    if i >= number:
                        name = effect.detector.name
                        spent[name] = spent.get(name, 0.0) + time.process_time() - start
                    effect = flow.send(result)
                else:
                    effect = flow.send(loop.run_until_complete(perform(effect)))
        except StopIteration:
            pass
    ranked = sorted(spent.items(), key=lambda kv: -kv[1])
    return [(f"default detector `{name}` (mean of {number:,})", t / number * 1e6) for name, t in ranked]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--request-log", action="store_true", help="only the pipeline and what recording it costs"
    )
    args = parser.parse_args(argv)
    if args.request_log:
        print("| step | us (best of repeats) |\n|---|---|")
        for name, us in request_log_steps(args.number, args.repeats):
            print(f"| {name} | {us:.1f} |")
        return
    print("| step | us (best of repeats) |\n|---|---|")
    for name, us in steps(args.number, args.repeats):
        print(f"| {name} | {us:.1f} |")
    print("\n| moving window, memory storage | bytes per window |\n|---|---|")
    for entries, size in window_memory():
        print(f"| {entries:,} request{'s' if entries > 1 else ''} in the window | {size:,.0f} |")


if __name__ == "__main__":
    main()

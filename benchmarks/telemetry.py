"""Per-request cost of distillguard's telemetry (span, metrics, usage reading).

Run from the repository root::

    python -m benchmarks.telemetry                 # defaults: 5 repeats x 4000 requests
    python -m benchmarks.telemetry --repeats 9 --requests 10000

Two measurements, both in process with no server:

1. **Telemetry calls alone.** A real decision is computed once; then the request's
   ``Exchange`` (what the adapters drive around the decision: the span, the metrics, the usage
   reading of a JSON response with ``usage``) is timed in a loop, with the SDK (batch span
   processor to a discarding exporter; a meter provider whose reader collects only at the end)
   and with no-op providers.
2. **End to end.** The guarded raw ASGI app of ``benchmarks/overhead.py`` (JWT, two limit
   windows, one trivial detector) with telemetry off (no-op providers) and with the span and
   metrics on (SDK providers), measured alternately; the difference is telemetry's share.

Times are the process's CPU time (``--wall`` for wall time). The tables give the median and
the min-max over the repeats (microseconds per request). The
reference row (one SDK span without attributes) is measured in the same run: on a busy machine
compare with it rather than with absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider

from distillguard import DistillGuardMiddleware, Guard, JWTConfig, LimitConfig, TelemetryConfig
from distillguard._drivers import drive
from distillguard.exchange import Exchange

from . import _apps
from .breakdown import guard_request

CLOCK = time.process_time_ns
"""CPU time of the process (all its threads: the span processor's too), not wall time, so that
other processes on a shared machine do not count; ``--wall`` switches to wall time."""

RESPONSE_WITH_USAGE = (
    b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"fine"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,'
    b'"total_tokens":18}}'
)


def make_guard(tracer_provider: Any, meter_provider: Any, *, usage: bool = True) -> Guard:
    """The benchmark guard with the given providers."""
    return Guard(
        jwt=JWTConfig(algorithms=["HS256"], key=_apps.SECRET, issuer=_apps.ISSUER, audience=_apps.AUDIENCE),
        limits=LimitConfig(default=_apps.LIMITS),
        detectors=[_apps.TrivialDetector()],
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        telemetry=TelemetryConfig(record_usage=usage),
    )


def providers(kind: str) -> tuple[Any, Any, InMemoryMetricReader | None]:
    """(tracer provider, meter provider, reader) for ``off``, ``sampled out`` (an SDK whose
    sampler drops every trace, plus SDK metrics), ``spans`` or ``spans+metrics``."""
    if kind == "off":
        return NoOpTracerProvider(), NoOpMeterProvider(), None
    if kind == "sampled out":
        provider = TracerProvider(sampler=ALWAYS_OFF)
        provider.add_span_processor(BatchSpanProcessor(_apps.DiscardExporter()))
        reader = InMemoryMetricReader()
        return provider, MeterProvider(metric_readers=[reader]), reader
    if kind == "spans":
        return _apps.tracer_provider(), NoOpMeterProvider(), None
    reader = InMemoryMetricReader()
    return _apps.tracer_provider(), MeterProvider(metric_readers=[reader]), reader


def telemetry_calls(guard: Guard, body: bytes) -> Callable[[int], float]:
    """A runner timing one request's :class:`~distillguard.exchange.Exchange` around a decision
    computed once: the span (begun, opened, finished), the metrics, the usage reading of a
    response body. This is everything telemetry adds to a request (microseconds per request)."""
    request = guard_request(f"Bearer {_apps.token()}", body)
    perform = guard.sync_performer()
    decision = drive(guard.flow(request), perform)

    def run(n: int) -> float:
        start = CLOCK()
        for _ in range(n):
            exchange = Exchange(guard, request)
            exchange.decided(decision)
            exchange.route = _apps.PATH
            exchange.response_start(200)
            exchange.response_body(RESPONSE_WITH_USAGE)
            exchange.finish()
        return (CLOCK() - start) / n / 1000

    return run


def bare_span(provider: Any) -> Callable[[int], float]:
    """The reference: one SDK span with no attributes, started and ended (microseconds)."""
    tracer = provider.get_tracer("reference")

    def run(n: int) -> float:
        start = CLOCK()
        for _ in range(n):
            tracer.start_span("reference").end()
        return (CLOCK() - start) / n / 1000

    return run


def end_to_end(loop: asyncio.AbstractEventLoop, guard: Guard, body: bytes) -> Callable[[int], float]:
    """A runner sending requests through the guarded raw ASGI app (microseconds per request)."""
    app = DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard)
    scopes = [_apps.asgi_scope(_apps.token(f"client-{i}"), body) for i in range(16)]

    def run(n: int) -> float:
        start = CLOCK()
        loop.run_until_complete(_apps.run_asgi(app, scopes, body, n))
        return (CLOCK() - start) / n / 1000

    return run


def measure(
    runners: dict[str, Callable[[int], float]], requests: int, repeats: int
) -> dict[str, list[float]]:
    """Warm each runner up, then run them alternately ``repeats`` times."""
    for run in runners.values():
        run(max(200, requests // 10))
    results: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            gc.collect()
            gc.disable()
            try:
                results[name].append(run(requests))
            finally:
                gc.enable()
    return results


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wall", action="store_true", help="measure wall time, not CPU time")
    args = parser.parse_args(argv)
    if args.wall:
        global CLOCK
        CLOCK = time.perf_counter_ns
    body = _apps.chat_body()
    loop = asyncio.new_event_loop()
    readers: list[InMemoryMetricReader] = []

    calls: dict[str, Callable[[int], float]] = {}
    e2e: dict[str, Callable[[int], float]] = {}
    for kind in ("off", "sampled out", "spans", "spans+metrics"):
        tp, mp, reader = providers(kind)
        if reader is not None:
            readers.append(reader)
        calls[kind] = telemetry_calls(make_guard(tp, mp), body)
        tp2, mp2, reader2 = providers(kind)
        if reader2 is not None:
            readers.append(reader2)
        e2e[kind] = end_to_end(loop, make_guard(tp2, mp2), body)
    tp, mp, reader = providers("spans+metrics")
    calls["spans+metrics, usage off"] = telemetry_calls(make_guard(tp, mp, usage=False), body)
    calls["reference: bare SDK span"] = bare_span(_apps.tracer_provider())

    results = measure(
        {**{f"calls/{k}": v for k, v in calls.items()}, **{f"e2e/{k}": v for k, v in e2e.items()}},
        args.requests,
        args.repeats,
    )  # all alternated in one loop: same machine load
    call_results = {k[6:]: v for k, v in results.items() if k.startswith("calls/")}
    e2e_results = {k[4:]: v for k, v in results.items() if k.startswith("e2e/")}
    for reader in readers:  # the deferred histogram values are recorded here, off the timings
        reader.get_metrics_data()

    clock = "wall" if args.wall else "CPU"
    print(f"Telemetry calls per request, {clock} us: median (min-max) of {args.repeats} x {args.requests}")
    for name, values in call_results.items():
        print(f"  {name:<28} {_fmt(values)}")
    print("End to end, guarded raw ASGI app, us per request")
    for name, values in e2e_results.items():
        print(f"  {name:<28} {_fmt(values)}")
    off = statistics.median(e2e_results["off"])
    for name in ("sampled out", "spans", "spans+metrics"):
        share = [v - o for v, o in zip(e2e_results[name], e2e_results["off"], strict=True)]
        total = statistics.median(e2e_results[name])
        print(
            f"  telemetry share ({name}): {statistics.median(share):.1f} us (of {total:.1f}; off {off:.1f})"
        )


if __name__ == "__main__":
    main()

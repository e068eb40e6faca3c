"""What the response watermark costs per answer, and how much of a copy's output proves it.

    python -m benchmarks.watermark

1. **Cost.** A raw ASGI app answering a chat request with a ~1 KB (and a ~4 KB) answer of
   natural prose, as one JSON body and as a stream of small SSE events (one per ~4 characters,
   like token deltas), guarded without and with ``Guard(watermark=...)`` (JWT, limits, no
   detector, non-recording tracer), alternately in one process: CPU per request and the
   difference.
2. **Power.** Natural prose (the in-the-wild jailbreak prompts, held-out half) stands for a
   suspect model's outputs. A copy that learnt the watermark reproduces the keyed word with
   probability ``r`` (else any word of the group, as the original writer would); for each ``r``
   the script finds how many words of the copy's output the test needs for p < 1e-6.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import statistics
import time
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

from distillguard import DistillGuardMiddleware, Guard, JWTConfig, LimitConfig
from distillguard.watermark import GROUPS, Watermark

from . import _apps
from .detection.corpora import jailbreaks

KEY = b"benchmark-watermark-key-0123456789"


def _prose(size: int) -> str:
    text = " ".join(jailbreaks("holdout"))
    return text[:size]


def _app(answer: str, stream: bool) -> Any:
    if stream:
        events = [
            b"data: "
            + json.dumps({"choices": [{"index": 0, "delta": {"content": answer[i : i + 4]}}]}).encode()
            + b"\n\n"
            for i in range(0, len(answer), 4)
        ] + [b"data: [DONE]\n\n"]
        kind = b"text/event-stream"
    else:
        events = [json.dumps({"choices": [{"index": 0, "message": {"content": answer}}]}).encode()]
        kind = b"application/json"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        for i, event in enumerate(events):
            await send({"type": "http.response.body", "body": event, "more_body": i < len(events) - 1})

    return app


def _guard(watermark: Watermark | None) -> Guard:
    jwt = JWTConfig(algorithms=["HS256"], key=_apps.SECRET, issuer=_apps.ISSUER, audience=_apps.AUDIENCE)
    limits = LimitConfig(default=_apps.LIMITS)
    return Guard(jwt=jwt, limits=limits, tracer_provider=NoOpTracerProvider(), watermark=watermark)


def cost(requests: int, repeats: int) -> list[tuple[str, float, float]]:
    """``(answer, us without, us with)`` per request, medians of the repeats."""
    loop = asyncio.new_event_loop()
    body = [_apps.chat_body()]
    scopes = [_apps.asgi_scope(_apps.token(), body[0])]
    rows = []
    for size in (1024, 4096):
        answer = _prose(size)
        for stream in (False, True):
            app = _app(answer, stream)
            plain = DistillGuardMiddleware(app, guard=_guard(None))
            marked = DistillGuardMiddleware(app, guard=_guard(Watermark(KEY)))
            runs: dict[str, list[float]] = {"plain": [], "marked": []}
            for _ in range(repeats + 1):  # the first round warms up
                for name, mw in (("plain", plain), ("marked", marked)):
                    ns = loop.run_until_complete(_apps.run_asgi(mw, scopes, body, requests))
                    runs[name].append(ns / requests / 1000)
            label = f"{size // 1024} KB, {'SSE (' + str(-(-size // 4)) + ' events)' if stream else 'JSON'}"
            rows.append((label, statistics.median(runs["plain"][1:]), statistics.median(runs["marked"][1:])))
    loop.close()
    return rows


def power(rates: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)) -> list[tuple[float, int | None]]:
    """``(r, words)``: the words of a copy's output the test needs for p < 1e-6."""
    watermark = Watermark(KEY)
    words_of = {w: g for g in GROUPS for w in g}
    texts = list(jailbreaks("holdout"))
    out = []
    for rate in rates:
        rng = random.Random(7)

        def copy(text: str, rate: float = rate, rng: random.Random = rng) -> str:
            return re.sub(
                r"[A-Za-z]+",
                lambda m: (
                    m.group()
                    if m.group().lower() not in words_of or rng.random() < rate
                    else rng.choice(words_of[m.group().lower()])
                ),
                watermark.mark(text),
            )

        outputs = [copy(t) for t in texts]
        needed = None
        words = 0
        for n in range(1, len(outputs) + 1):
            words += len(outputs[n - 1].split())
            if n % 5 == 0 and watermark.evidence(outputs[:n]).p_value < 1e-6:
                needed = words
                break
        out.append((rate, needed))
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = f"python -m benchmarks.watermark --requests {args.requests} --repeats {args.repeats}"
    print(f"`{command}` ({started})\n")
    print("| answer | guarded us/request | guarded + watermark us/request | watermark us | ratio |")
    print("|---|---|---|---|---|")
    for label, plain, marked in cost(args.requests, args.repeats):
        print(f"| {label} | {plain:.1f} | {marked:.1f} | {marked - plain:+.1f} | {marked / plain:.2f}x |")
    print("\n| copy reproduces the keyed word | words of its output needed for p < 1e-6 |")
    print("|---|---|")
    for rate, needed in power():
        shown = f"{needed:,}" if needed is not None else "more than the sample"
        print(f"| {rate:.0%} | {shown} |")


if __name__ == "__main__":
    main()

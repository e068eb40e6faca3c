"""``distillguard demo``: a guarded mock model, benign users and one extractor, over real HTTP.

The demo needs no network and no configuration. It starts the FastAPI example app
(``examples/fastapi_app.py``) in-process with uvicorn on a free local port, guarded with the
development settings and every registered detector, then replays simulated traffic through the
official ``openai`` client: a few benign users asking varied questions, and one extractor sweeping
a template and probing log probabilities. Decisions are read from the guard's OpenTelemetry spans,
as a collector would see them. The exit status is 0 when the extractor was caught (flagged,
degraded or blocked) and no benign user was refused, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from ..errors import ConfigurationError
from ..limiting import LimitConfig
from ..settings import DEV_AUDIENCE, DEV_ISSUER, DEV_SECRET, guard_from_env, registered_detectors
from ..telemetry import ATTR_CLIENT_ID, ATTR_DECISION, ATTR_REASONS, ATTR_SCORE, SPAN_NAME, hash_identifier
from ._demo_report import ClientStats, Outcome, render_summary, summarise
from ._demo_traffic import BENIGN_USERS, EXTRACTOR, Call, schedule

__all__ = ["register", "run", "serve"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="run a guarded mock model against benign users and an extractor",
        description=(
            "Start the FastAPI example app in-process (uvicorn, a free local port, development "
            "settings, every registered detector) and replay simulated traffic through the openai "
            "client: benign users and one extractor. Exit status 0 when the extractor is caught and "
            "no benign user is refused, 1 otherwise, 2 on a configuration error."
        ),
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the summary as JSON to PATH")
    parser.add_argument(
        "--detectors",
        metavar="NAMES",
        help="comma-separated detector entry-point names (default: every registered detector)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the simulated traffic (default 7)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.set_defaults(func=run)


@contextlib.contextmanager
def serve(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a background thread on a free port; yield its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class _SpanQueue(SpanProcessor):
    """Hands every finished guard span to the demo, in order."""

    def __init__(self) -> None:
        self.spans: queue.Queue[ReadableSpan] = queue.Queue()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == SPAN_NAME:
            self.spans.put(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _SimClock:
    """The guard's clock: the simulation's start plus the current call's offset."""

    def __init__(self) -> None:
        self.start = time.time()
        self.offset = 0.0

    def __call__(self) -> float:
        return self.start + self.offset


def _example_module() -> ModuleType | None:
    """Import ``examples.fastapi_app`` from the source checkout, ignoring DISTILLGUARD_* variables
    (its module-level app is built from them; the demo builds its own guard)."""
    name = "examples.fastapi_app"
    if name in sys.modules:
        return sys.modules[name]
    roots = [Path.cwd(), Path(__file__).resolve().parents[3]]
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("DISTILLGUARD_")}
    settings_logger = logging.getLogger("distillguard.settings")
    level = settings_logger.level
    settings_logger.setLevel(logging.ERROR)
    try:
        for root in roots:
            if (root / "examples" / "fastapi_app.py").is_file():
                if str(root) not in sys.path:
                    sys.path.insert(0, str(root))
                return importlib.import_module(name)
        return None
    finally:
        settings_logger.setLevel(level)
        os.environ.update(saved)


def _mint(client: str, now: float) -> str:
    import jwt

    tier = "free" if client != "bob" else "pro"
    claims = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": client, "tier": tier}
    return jwt.encode({**claims, "iat": int(now), "exp": int(now) + 86_400}, DEV_SECRET, algorithm="HS256")


def _send(client: Any, call: Call) -> tuple[int, str | None, bool]:
    """Send ``call``; return ``(status, problem code, logprobs served)``."""
    import openai

    try:
        if call.params.get("stream"):
            stream = client.chat.completions.create(**call.params)
            for _ in stream:
                pass
            return 200, None, False
        reply = client.chat.completions.create(**call.params)
        served = bool(reply.choices) and reply.choices[0].logprobs is not None
        return 200, None, served
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, str(body.get("code") or "error"), False
    except openai.APIConnectionError:
        return 0, "connection_error", False


def _log_line(call: Call, number: int, outcome: Outcome) -> str:
    minutes, seconds = divmod(int(call.at), 60)
    preview = call.prompt if len(call.prompt) <= 44 else call.prompt[:43] + "…"
    verdict = outcome.action + ("" if outcome.code is None else f" ({outcome.code})")
    if call.params.get("logprobs") and outcome.status == 200 and not outcome.logprobs_served:
        verdict += " (no logprobs)"
    reasons = ",".join(outcome.reasons[:2])
    return (
        f"  +{minutes:02d}:{seconds:02d}  {call.client:<8} #{number:<3} {call.kind:<8} {preview:<45} "
        f"{outcome.status:>3}  {verdict:<24} {outcome.score:4.2f}  {reasons}"
    ).rstrip()


def _detector_names(args: argparse.Namespace) -> tuple[str, ...]:
    if args.detectors is None:
        return registered_detectors()
    return tuple(n.strip() for n in args.detectors.split(",") if n.strip())


def run(args: argparse.Namespace) -> int:
    """Run the demo; return 0 when the extractor was caught and no benign user was refused."""
    started = time.monotonic()
    try:
        import openai
    except ImportError:
        print("distillguard demo needs the demo extra: pip install 'distillguard[demo]'", file=sys.stderr)
        return 2
    module = _example_module()
    if module is None:
        print(
            "distillguard demo serves examples/fastapi_app.py: run it from the source checkout",
            file=sys.stderr,
        )
        return 2
    names = _detector_names(args)
    spans = _SpanQueue()
    provider = TracerProvider()
    provider.add_span_processor(spans)
    clock = _SimClock()
    environ = {
        "DISTILLGUARD_JWT_SECRET": DEV_SECRET,
        "DISTILLGUARD_JWT_ISSUER": DEV_ISSUER,
        "DISTILLGUARD_JWT_AUDIENCE": DEV_AUDIENCE,
        "DISTILLGUARD_DETECTORS": ",".join(names),
    }
    try:
        guard = guard_from_env(
            environ, limits=LimitConfig(default="1000/minute"), tracer_provider=provider, clock=clock
        )
    except ConfigurationError as exc:
        print(f"distillguard demo: {exc}", file=sys.stderr)
        return 2
    say = (lambda _line: None) if args.quiet else print
    say("distillguard demo: a guarded OpenAI-compatible mock, development settings (never in production)")
    if names:
        say(f"detectors: {', '.join(names)}")
    else:
        say("detectors: none registered in 'distillguard.detectors', so nothing can catch the extractor")
    calls = schedule(args.seed)
    stats = {c: ClientStats(client=c, role="benign") for c in BENIGN_USERS}
    stats[EXTRACTOR] = ClientStats(client=EXTRACTOR, role="extractor")
    hashed = {hash_identifier(c, guard.telemetry.config.hash_key): c for c in stats}
    with serve(module.create_app(guard)) as url:
        say(f"serving on {url}; {len(calls)} requests over {calls[-1].at / 60:.0f} simulated minutes\n")
        clients = {
            c: openai.OpenAI(base_url=url + "/v1", api_key=_mint(c, clock.start), max_retries=0, timeout=30)
            for c in stats
        }
        for call in calls:
            clock.offset = call.at
            status, code, logprobs = _send(clients[call.client], call)
            try:
                span = spans.spans.get(timeout=10)
            except queue.Empty:
                print("distillguard demo: the guard recorded no span for a request", file=sys.stderr)
                return 1
            attrs = span.attributes or {}
            if hashed.get(str(attrs.get(ATTR_CLIENT_ID))) != call.client:
                print("distillguard demo: spans arrived out of order", file=sys.stderr)
                return 1
            outcome = Outcome(
                status=status,
                code=code,
                action=str(attrs.get(ATTR_DECISION, "unknown")),
                score=float(attrs.get(ATTR_SCORE, 0.0)),  # type: ignore[arg-type]
                reasons=tuple(str(r) for r in attrs.get(ATTR_REASONS, ())),  # type: ignore[union-attr]
                logprobs_served=logprobs,
            )
            number = stats[call.client].record(outcome)
            say(_log_line(call, number, outcome))
        for c in clients.values():
            c.close()
    provider.shutdown()
    summary = summarise(list(stats.values()), names, time.monotonic() - started)
    print()
    print(render_summary(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["passed"] else 1

"""``distillguard gateway``: the guard as a reverse proxy in front of a model server.

Settings come from the ``DISTILLGUARD_*`` environment variables (:mod:`distillguard.settings`)
plus ``DISTILLGUARD_UPSTREAM`` (the model server's URL, or ``--upstream``) and
``DISTILLGUARD_UPSTREAM_AUTHORIZATION`` (an ``Authorization`` value sent to it). It serves with
uvicorn (``pip install 'distillguard[gateway]'``). With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set it
exports its spans and metrics over OTLP/HTTP (:mod:`distillguard.telemetry.otlp`; ``pip install
'distillguard[gateway,otlp]'``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError
from .check import redacted_uri

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``gateway`` sub-command."""
    parser = subparsers.add_parser(
        "gateway",
        help="serve the guard as a reverse proxy in front of a model server",
        description=(
            "Forward every request to the model server at --upstream (or $DISTILLGUARD_UPSTREAM) "
            "through the guard, configured from the DISTILLGUARD_* environment variables. "
            "Exit status 2 on a configuration error."
        ),
    )
    parser.add_argument("--upstream", metavar="URL", help="the model server's base URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for each chunk of the upstream's answer, the first included "
        "(default 600: a non-streamed answer comes only once generated)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for a connection to the upstream (default 10)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        default="",
        help="trust X-Forwarded-For/-Proto from these proxy addresses (comma-separated, or '*'): "
        "the client address the limits and detectors see; by default the headers are ignored",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=100,
        help="connections each worker keeps to the upstream (default 100); requests past them "
        "wait for a free one",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1); several need a shared DISTILLGUARD_STORAGE_URI "
        "(redis://...), on which they share limits, penalty box and detector state",
    )
    parser.add_argument(
        "--upstream-ca",
        metavar="FILE",
        help="verify the upstream's TLS certificate against this CA bundle (PEM) instead of "
        "the system's (an https:// model server with a private CA)",
    )
    parser.add_argument(
        "--forward-authorization",
        action="store_true",
        help="also forward the client's Authorization header to the upstream",
    )
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log a line per request (the spans and metrics already record each one)",
    )
    parser.set_defaults(func=run)


_OPTIONS = "DISTILLGUARD_GATEWAY_OPTIONS"
"""How the command hands its options to its worker processes (``--workers``)."""


def _app(options: Mapping[str, Any], on_shutdown: tuple[Callable[[], object], ...] = ()) -> Any:
    """The gateway app for the command's ``options`` (see :func:`run`).

    Raises:
        ConfigurationError: for a bad setting.
    """
    from ..gateway import gateway_app

    return gateway_app(
        options["upstream"],
        timeout=options["timeout"],
        connect_timeout=options["connect_timeout"],
        max_connections=options["max_connections"],
        forward_authorization=options["forward_authorization"],
        verify=options["upstream_ca"] or True,
        on_shutdown=on_shutdown,
    )


def _build(options: Mapping[str, Any]) -> Any:
    """:func:`_app`, exporting over OTLP when the environment names an endpoint (its providers
    flushed at shutdown)."""
    from ..telemetry.otlp import otlp_endpoint, otlp_from_env

    export = otlp_from_env()  # before the guard: it takes the global providers
    app = _app(options, () if export is None else (export.shutdown,))  # the last batch is sent
    if export is not None:
        logging.getLogger("distillguard").info(
            "distillguard gateway: exporting spans and metrics over OTLP/HTTP to %s",
            redacted_uri(otlp_endpoint() or ""),
        )
    return app


def worker_app() -> Any:
    """The app of one worker process of ``--workers`` (a uvicorn factory)."""
    return _build(json.loads(os.environ[_OPTIONS]))


def _check_workers(options: Mapping[str, Any], workers: int) -> None:
    """Check, before any worker starts, what each will build (a worker failing at startup
    would be restarted over and over), and that several workers share their counts."""
    from ..limiting.storage import is_memory
    from ..settings import settings_from_env
    from ..telemetry.otlp import check_otlp_env

    if workers < 1:
        raise ConfigurationError("--workers must be at least 1")
    check_otlp_env()
    _app(options)
    settings = settings_from_env()
    if workers > 1 and is_memory(settings.storage_uri):
        raise ConfigurationError(
            "several workers need a shared DISTILLGUARD_STORAGE_URI (redis://...): on memory:// "
            "each worker would count its own limits, penalty box and detector state"
        )
    if workers > 1 and settings.request_log and "{pid}" not in settings.request_log:
        raise ConfigurationError(
            "several workers need {pid} in DISTILLGUARD_REQUEST_LOG (e.g. requests-{pid}.jsonl): "
            "each worker writes a file of its own"
        )


def run(args: argparse.Namespace) -> int:
    """Build the gateway and serve it until interrupted (in ``args.workers`` processes)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn
    except ModuleNotFoundError:
        print("distillguard gateway needs uvicorn: pip install 'distillguard[gateway]'", file=sys.stderr)
        return 2
    options = {
        "upstream": args.upstream,
        "timeout": args.timeout,
        "connect_timeout": args.connect_timeout,
        "max_connections": args.max_connections,
        "forward_authorization": args.forward_authorization,
        "upstream_ca": args.upstream_ca,
    }
    try:
        if args.workers == 1:
            app: Any = _build(options)
        else:
            _check_workers(options, args.workers)
            os.environ[_OPTIONS] = json.dumps(options)  # the workers inherit it
            app = f"{__name__}:worker_app"
    except ConfigurationError as exc:
        print(f"distillguard gateway: {exc}", file=sys.stderr)
        return 2
    trusted = args.forwarded_allow_ips.strip()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=not args.no_access_log,
        lifespan="on",
        factory=args.workers > 1,
        workers=args.workers,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )
    return 0

"""The apps of :mod:`benchmarks.http`, importable by uvicorn (``benchmarks._serve:guarded``)."""

from __future__ import annotations

from opentelemetry.trace import NoOpTracerProvider

from . import _apps, _peers

bare = _apps.starlette_app()
"""Bare Starlette."""

guarded = _apps.guarded_starlette(_apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()]))
"""Starlette guarded by distillguard (JWT, two windows, span, trivial detector)."""

guarded_unsampled = _apps.guarded_starlette(_apps.make_guard(NoOpTracerProvider(), [_apps.TrivialDetector()]))
"""The same with a non-recording tracer (what a request whose trace is sampled out costs)."""


def peer() -> object:
    """The Starlette peer stack (an app factory: ``--factory``)."""
    return _peers.starlette_peer(_apps.tracer_provider())


def gateway() -> object:
    """A bare :class:`~distillguard.gateway.Gateway` to ``$DG_BENCH_UPSTREAM`` (``--factory``)."""
    import os

    from distillguard.gateway import Gateway

    return Gateway(os.environ["DG_BENCH_UPSTREAM"])


def guarded_gateway() -> object:
    """The guarded gateway to ``$DG_BENCH_UPSTREAM`` (JWT, two windows, span, trivial detector)."""
    import os

    from distillguard.gateway import gateway_app

    guard = _apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()])
    return gateway_app(os.environ["DG_BENCH_UPSTREAM"], guard=guard)

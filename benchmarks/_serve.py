"""The apps of :mod:`benchmarks.http`, importable by uvicorn (``benchmarks._serve:guarded``)."""

from __future__ import annotations

from . import _apps, _peers

bare = _apps.starlette_app()
"""Bare Starlette."""

guarded = _apps.guarded_starlette(_apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()]))
"""Starlette guarded by distillguard (JWT, two windows, span, trivial detector)."""


def peer() -> object:
    """The Starlette peer stack (an app factory: ``--factory``)."""
    return _peers.starlette_peer(_apps.tracer_provider())

"""Flask integration: the ``init_app`` extension pattern over the WSGI middleware."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .guard import Guard
from .wsgi import DistillGuardWSGIMiddleware

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["DistillGuard", "current_decision"]


class DistillGuard:
    """Flask extension: wraps ``app.wsgi_app`` and registers under ``app.extensions``.

    Args:
        guard: the :class:`~distillguard.Guard`.
        app: the Flask app, or ``None`` to call :meth:`init_app` later.

    Example::

        guard_ext = DistillGuard(guard)
        guard_ext.init_app(app)

    .. versionadded:: 0.1
    """

    def __init__(self, guard: Guard, app: Flask | None = None) -> None:
        self.guard = guard
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, enrich_spans: bool = True) -> None:
        """Guard ``app`` (the app is not stored on the extension).

        Args:
            app: the Flask app.
            enrich_spans: also register :func:`distillguard.telemetry.flask.enrich_flask_spans`,
                so the guard's span gets the matched ``http.route`` and Flask's own server span
                (when ``FlaskInstrumentor`` instrumented the app *before* this call) gets the
                decision and a link to the guard's span.
        """
        if "distillguard" in app.extensions:
            raise RuntimeError("distillguard is already initialised on this app")
        app.wsgi_app = DistillGuardWSGIMiddleware(app.wsgi_app, guard=self.guard)  # type: ignore[method-assign]
        if enrich_spans:
            from .telemetry.flask import enrich_flask_spans

            enrich_flask_spans(app)
        app.extensions["distillguard"] = self


def current_decision() -> Any:
    """The :class:`~distillguard.Decision` of the current Flask request (``None`` if unguarded)."""
    from flask import request

    return request.environ.get("distillguard.decision")

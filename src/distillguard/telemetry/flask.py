"""Flask: tie the guard's span to the server span of ``opentelemetry-instrumentation-flask``.

That instrumentation starts its ``SERVER`` span in a ``before_request`` hook, inside the WSGI
app, so the guard (a WSGI middleware around ``app.wsgi_app``) runs before any span exists: its
span continues the caller's trace (``traceparent``) or starts its own, and Flask's span stays
the one ``SERVER`` span. :func:`enrich_flask_spans` adds a hook, run after the
instrumentation's, that links the two spans both ways, puts the decision on the server span and
gives the guard's span the Flask route (``http.route``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

from .names import ATTR_DECISION, ATTR_SHADOW
from .propagation import EXCHANGE_ENVIRON_KEY

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["enrich_flask_spans"]


def enrich_flask_spans(app: Flask) -> None:
    """Register the ``before_request`` hook on ``app``.

    Call it after ``FlaskInstrumentor().instrument_app(app)`` (hooks run in registration order)
    or after ``FlaskInstrumentor().instrument()`` and the app's creation. Without the
    instrumentation the hook only records the route on the guard's span.

    .. versionadded:: 0.1
    """
    from flask import request

    if app.extensions.get("distillguard.spans"):  # registered already (e.g. by init_app)
        return
    app.extensions["distillguard.spans"] = True

    def _distillguard_spans() -> None:
        exchange = request.environ.get(EXCHANGE_ENVIRON_KEY)
        if exchange is None:
            return
        rule = request.url_rule
        if rule is not None:
            exchange.route = rule.rule
        guard_span = exchange.span
        server = trace.get_current_span()
        if server is guard_span or not server.is_recording():
            return
        decision = exchange.decision
        if decision is not None:
            server.set_attribute(ATTR_DECISION, decision.action.value)
            if decision.shadow:
                server.set_attribute(ATTR_SHADOW, True)
        guard_context = guard_span.get_span_context()
        if guard_context.is_valid:
            server.add_link(guard_context)
            if guard_span.is_recording():
                guard_span.add_link(server.get_span_context())

    app.before_request(_distillguard_spans)

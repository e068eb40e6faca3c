"""The guard's span: where it goes in the trace and what it records.

**Placement.** Each guarded request gets one span named ``distillguard.guard``, normally
``INTERNAL``.

* When a span is current (the ``SERVER`` span of FastAPI's native telemetry or of the contrib
  ASGI/FastAPI instrumentation placed outside the guard), the guard's span is its child and is
  made current while the app runs, so the app's spans nest under it.
* When no span is current (no instrumentation, Flask's instrumentation, which starts its span
  in a ``before_request`` hook, or the contrib ASGI middleware placed *inside* the guard), the
  guard's span continues the caller's trace from the ``traceparent`` header (a sibling of the
  server span the framework starts later) or starts its own trace, and it is **not** made
  current: the instrumentation downstream must still see "no span" and start its ``SERVER``
  span, otherwise it would demote it to ``INTERNAL``. :func:`distillguard.telemetry.flask.
  enrich_flask_spans` links the two spans in Flask. In this case the span is started (with the
  request's arrival time) once the decision is known: a request the guard refuses never
  reaches the framework, whose instrumentation therefore never starts a ``SERVER`` span for
  it, so the guard's span is the ``SERVER`` span of that request.

So there is exactly one ``SERVER`` span per request whenever the framework is instrumented.

**Cost.** Attributes known when the request arrives are passed to ``start_span``; everything
else is gathered into one dict and set with a single ``set_attributes`` call when the span ends
(only when it is recording); an event is added only when the request is not allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from itertools import islice
from time import time_ns
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer, TracerProvider

from .._version import __version__
from ..decision import Action, Decision
from ..limiting.usage import Usage
from ..request import GuardRequest
from . import names as n
from .attributes import AttributeBuilder
from .config import TelemetryConfig
from .metrics import GuardMetrics
from .propagation import carries_context
from .usage import UsageReader, reader_for, usage_of

if TYPE_CHECKING:
    from ..guard import Guard

__all__ = ["Pending", "Telemetry"]

_START_RESERVE = 4  # method, path, client address, user agent
logger = logging.getLogger("distillguard")


def _qualname(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


class Pending:
    """A guard span not started yet: what :meth:`Telemetry.open` needs to start it."""

    __slots__ = ("attributes", "parent", "start")

    def __init__(self, attributes: dict[str, Any], parent: Context | None, start: int) -> None:
        self.attributes = attributes
        self.parent = parent
        self.start = start


_NOTHING = Pending({}, None, 0)


def _is_noop(tracer: Tracer) -> bool:
    """Whether ``tracer`` can only make non-recording spans (no SDK installed)."""
    if isinstance(tracer, trace.ProxyTracer):  # the global provider: real once an SDK is set
        tracer = getattr(tracer, "_tracer", tracer)
    return isinstance(tracer, trace.NoOpTracer)


class Telemetry:
    """Starts the guard's span, records decisions on it, and owns the guard's metrics.

    Args:
        config: telemetry settings.
        tracer_provider: the provider for spans (the global one when ``None``).
        meter_provider: the provider for metrics (the global one when ``None``).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config
        self.tracer: Tracer = trace.get_tracer("distillguard", __version__, tracer_provider)
        self.metrics = GuardMetrics(meter_provider)
        self.attrs = AttributeBuilder(config)
        self._budget = config.max_span_attributes - _START_RESERVE
        self._enrich = config.span == "enrich"
        self._failures: set[tuple[str, type[BaseException]]] = set()

    def failed(self, stage: str, exc: BaseException) -> None:
        """Log a telemetry failure (a span processor, exporter or metric reader raised) once per
        stage and exception type, never with its message (which may quote the request)."""
        key = (stage, type(exc))
        if key not in self._failures and len(self._failures) < 64:
            self._failures.add(key)
            logger.warning(
                "distillguard: telemetry failed at %s (%s); requests go on without the guard's span",
                stage,
                _qualname(type(exc)),
            )

    def observe(self, guard: Guard) -> None:
        """Wire the metrics to ``guard``: its policy thresholds, the detectors that report how
        many clients they track (:class:`~distillguard.telemetry.ClientTracker`), the risk
        engine's tracked clients (reported as ``risk``) and the limiter statistics."""
        import weakref

        policy = guard.policy
        self.metrics.set_thresholds(policy.flag, policy.degrade, policy.block)
        for detector in guard.detectors:
            source = getattr(detector, "tracked_clients", None)
            if callable(source):
                self.metrics.track_clients(detector.name, source)
        engine = getattr(guard, "risk", None)
        if engine is not None and hasattr(engine, "tracked"):
            self.metrics.track_clients("risk", lambda: int(engine.tracked))
        ref = weakref.ref(guard)
        self.metrics.use_limiter_stats(lambda: getattr(ref(), "limiter_stats", None))
        self.metrics.use_state_share(lambda: getattr(ref(), "state_share", None))

    # -- span ----------------------------------------------------------------------------------

    def begin(
        self, request: GuardRequest, carrier: Any = None, getter: Getter[Any] | None = None
    ) -> tuple[Span, Pending | None, bool]:
        """Begin the guard's span for ``request``: ``(span, pending, own)``.

        When a span is current, start the guard's span as its child and return it with
        ``None`` and ``True``: the caller makes it current while the app runs. With
        ``span="enrich"`` return the current span itself and ``False`` instead: the guard
        records on it and neither makes it current nor ends it. With no current span return
        ``INVALID_SPAN``, a :class:`Pending` span (the trace context read from ``carrier`` with
        ``getter``, the start time) and ``True``: :meth:`open` starts it once the decision is
        known, as ``SERVER`` if the guard answers the request itself, else ``INTERNAL``; it is
        never made current (see the module docstring)."""
        if _is_noop(self.tracer):  # no SDK: nothing to build, no context to read
            return INVALID_SPAN, _NOTHING, True
        current = trace.get_current_span()
        if current is not INVALID_SPAN and current.get_span_context().is_valid:
            if self._enrich:
                return current, None, False
            attributes = self.attrs.request(request)
            span = self.tracer.start_span(n.SPAN_NAME, kind=SpanKind.INTERNAL, attributes=attributes)
            return span, None, True
        parent = None
        if carrier is not None and getter is not None and carries_context(carrier, getter):
            parent = propagate.extract(carrier, getter=getter)
        return INVALID_SPAN, Pending(self.attrs.request(request), parent, time_ns()), True

    def open(self, pending: Pending, decision: Decision | None) -> Span:
        """Start a :class:`Pending` span: ``SERVER`` when ``decision`` refuses the request (no
        server instrumentation will see it: the guard is the server), else ``INTERNAL``."""
        if pending is _NOTHING:
            return INVALID_SPAN
        kind = SpanKind.SERVER if decision is not None and decision.problem is not None else SpanKind.INTERNAL
        return self.tracer.start_span(
            n.SPAN_NAME,
            context=pending.parent,
            kind=kind,
            attributes=pending.attributes,
            start_time=pending.start,
        )

    def start(self, request: GuardRequest) -> Span:
        """Start the guard's span for ``request`` (a child of the current span, if any)."""
        span, pending, _ = self.begin(request)
        return span if pending is None else self.open(pending, None)

    def record(self, span: Span, decision: Decision) -> None:
        """Count ``decision`` in the metrics; add a span event unless the request was allowed.
        (Its attributes are set by :meth:`finish`, in the same call as the response's.)"""
        self.metrics.record_decision(decision)
        if decision.action is not Action.ALLOW and span.is_recording():
            event: dict[str, Any] = {n.ATTR_DECISION: decision.action.value, n.ATTR_SCORE: decision.score}
            if decision.reasons:
                event[n.ATTR_REASONS] = self.attrs.strings(decision.reasons)
            if decision.shadow:
                event[n.ATTR_SHADOW] = True
            span.add_event(n.EVENT_DECISION, event)

    def stream_ended(self, span: Span, reason: str) -> None:
        """Record that the guard cut a streamed answer, and why."""
        self.metrics.record_stream_ended(reason)
        if span.is_recording():
            span.set_attribute(n.EVENT_STREAM_ENDED, True)
            span.add_event(n.EVENT_STREAM_ENDED, {n.ATTR_REASONS: [reason]})

    def enrich(self, span: Span, decision: Decision) -> None:
        """Record ``decision`` on a span the guard does not own (``span="enrich"``), as soon as
        it is known: the span's owner may end it as soon as the response is sent."""
        if span.is_recording():
            attrs: dict[str, Any] = {}
            self.attrs.decision(decision, attrs)
            if decision.results:
                self.attrs.detectors(decision, attrs)
            span.set_attributes(dict(islice(attrs.items(), self._budget)))

    def finish(
        self,
        span: Span,
        status: int | None,
        exc: BaseException | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        decision: Decision | None = None,
        route: str | None = None,
        usage: Usage | None = None,
        own: bool = True,
    ) -> None:
        """Set the span's attributes (response status, route, token ``usage``, ``decision``) in
        one call and end ``span``. An app exception ``exc`` is recorded as ``error.type`` and an
        error status, never with its message (which may quote the request).

        A span the guard does not ``own`` (``span="enrich"``: the server span) gets the token
        usage only (:meth:`enrich` recorded the decision): its owner records the status, the
        route and errors, and ends it."""
        if not own:  # the decision is already on it (:meth:`enrich`)
            if span.is_recording():
                attrs: dict[str, Any] = {}
                self._usage_attributes(usage, attrs)
                if extra:
                    attrs.update(extra)
                if attrs:
                    span.set_attributes(attrs)
            return
        if span.is_recording():
            attrs = {}
            if status is not None:
                attrs[n.HTTP_STATUS] = status
            if route:
                attrs[n.HTTP_ROUTE] = self.attrs.cap(route)
            if decision is not None:
                self.attrs.decision(decision, attrs)
            self._usage_attributes(usage, attrs)
            if extra:
                attrs.update(extra)
            if decision is not None and decision.results:
                self.attrs.detectors(decision, attrs)  # the least important: cut first
            failed = False  # the guard answered 5xx itself (e.g. its storage is unavailable)
            if exc is not None:
                # the type only (an ``exception`` event without message or stack trace): the
                # app's exception message may quote the request
                attrs = {n.ERROR_TYPE: _qualname(type(exc)), **attrs}
            elif (
                status is not None and status >= 500 and decision is not None and decision.problem is not None
            ):
                failed = True
                attrs = {n.ERROR_TYPE: str(status), **attrs}
            if len(attrs) > self._budget:
                attrs = dict(islice(attrs.items(), self._budget))
            span.set_attributes(attrs)
            if exc is not None:
                span.add_event("exception", {"exception.type": attrs[n.ERROR_TYPE]})
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            elif failed:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
        span.end()

    @staticmethod
    def _usage_attributes(usage: Usage | None, attrs: dict[str, Any]) -> None:
        if usage is not None:
            if usage.prompt is not None:
                attrs[n.GEN_AI_USAGE_INPUT] = usage.prompt
            attrs[n.GEN_AI_USAGE_OUTPUT] = usage.completion
            if usage.source != "usage":
                attrs[n.ATTR_USAGE_SOURCE] = usage.source

    # -- token usage (see :mod:`distillguard.telemetry.usage`) -------------------------------

    def usage_parser(self, span: Span, decision: Decision) -> UsageReader | None:
        """A reader for the response's token ``usage``, when the span wants it and no token
        limit already reads it (``None`` otherwise: nothing to read)."""
        if not self.config.record_usage or not span.is_recording():
            return None
        return reader_for(decision)

    @staticmethod
    def usage(reader: UsageReader | None, decision: Decision | None) -> Usage | None:
        """The response's token usage, from ``reader`` or the token limits' own reading."""
        return usage_of(reader, decision)

    # -- attributes (see :class:`~distillguard.telemetry.attributes.AttributeBuilder`) ------

    def client_attribute(self, client_id: str) -> str:
        """The value recorded for ``client_id`` (hashed when configured)."""
        return self.attrs.client(client_id)

    def attributes(self, decision: Decision) -> dict[str, Any]:
        """The span attributes describing ``decision`` (pure; no raw request contents)."""
        attrs: dict[str, Any] = {}
        self.attrs.decision(decision, attrs)
        self.attrs.detectors(decision, attrs)
        return attrs

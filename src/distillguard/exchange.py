"""The lifecycle of one guarded request after the decision, shared by both adapters (sans-IO).

The adapters report what the app does (``response_start``, ``response_body``) and when the
exchange is over (``finish``); the exchange keeps the span, watches the response (status,
streamed bytes) and, once it is complete, yields the *settle* effects of the pipeline (for
example reconciling a token budget with the response's ``usage``) for the adapter's driver.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import INVALID_SPAN

from ._marking import ResponseMarking, readable
from .decision import Action, Decision
from .flow import penalty_left
from .limiting.concurrency import SharedSlot
from .request import GuardRequest

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span

    from .flow import Effect
    from .guard import Guard
    from .telemetry.spans import Pending
    from .telemetry.usage import UsageReader

__all__ = ["Exchange"]


class Exchange:
    """One request, from the start of its span to the end of its response.

    Use it as the adapters do::

        exchange = Exchange(guard, request)     # starts the span, makes it current
        decision = exchange.decided(await guard.adecide(request, perform))
        ...                                     # send the refusal, or call the app with
        extra = exchange.response_start(status)  # headers to add to the app's
        exchange.response_body(chunk)           # each body chunk, as it passes
        await adrive_settle(exchange.settle(), perform)      # after the response
        exchange.finish(exc)                    # ends the span, detaches the context
    """

    __slots__ = (
        "_marking",
        "_overhead",
        "_own",
        "_pending",
        "_recheck_at",
        "_started",
        "_token",
        "_unreadable",
        "_usage",
        "decision",
        "ending",
        "guard",
        "request",
        "route",
        "span",
        "status",
    )

    def __init__(
        self, guard: Guard, request: GuardRequest, carrier: Any = None, getter: Getter[Any] | None = None
    ) -> None:
        self._started = perf_counter()
        self._overhead = 0.0
        self.guard = guard
        self.request = request
        # ``carrier``/``getter`` read the request headers (trace context when no span is current);
        # without a current span the guard's span starts at the decision (``_pending``)
        self.span: Span = INVALID_SPAN
        self._pending: Pending | None = None
        self._own = True  # False: the span is the server span, enriched (not ended) by the guard
        self._token: object | None = None
        try:
            self.span, self._pending, self._own = guard.telemetry.begin(request, carrier, getter)
            if self._pending is None and self._own:
                self._token = otel_context.attach(trace.set_span_in_context(self.span))
        except Exception as exc:  # telemetry never breaks a request (a span processor's bug)
            self._drop_span("start", exc)
        self.decision: Decision | None = None
        self.status: int | None = None
        self.route: str | None = None  # the matched route template, when the framework tells
        self._usage: UsageReader | None = None  # reads ``usage`` for the span (no token limits)
        self._marking: ResponseMarking | None = None  # the answer's watermarking, if any
        self._unreadable = False  # an answer to rewrite came in an encoding that cannot be read
        self._recheck_at: float | None = None  # when the streamed answer's client is checked again
        self.ending: bytes | None = None  # the answer's last bytes, once its client is boxed

    def decided(self, decision: Decision) -> Decision:
        """Record ``decision`` on the span, tell the guard's ``on_decision`` hook; return it."""
        self.decision = decision
        telemetry = self.guard.telemetry
        try:
            if self._pending is not None:
                self.span = telemetry.open(self._pending, decision)
                self._pending = None
            telemetry.record(self.span, decision)
            if not self._own:
                telemetry.enrich(self.span, decision)
            self._usage = telemetry.usage_parser(self.span, decision)
        except Exception as exc:
            self._drop_span("decision", exc)
        hook = self.guard.on_decision
        if hook is not None:
            try:
                hook(decision, self.request)
            except Exception as exc:  # the user's hook never breaks the request
                self.guard.hook_failed(exc)
        self._overhead = perf_counter() - self._started
        return decision

    def refusal(self, decision: Decision) -> tuple[int, list[tuple[str, str]], bytes]:
        """The guard's answer to a refused request, rendered (``decision.problem`` with the
        decision's headers), with the request id header naming the request's trace when it is
        sampled (``TelemetryConfig.request_id_header``: what OpenAI's SDKs report as an
        error's ``request_id``, for support to find the span). The status is recorded."""
        assert decision.problem is not None
        status, headers, body = decision.problem.render(decision.headers, self.guard.error_format)
        name = self.guard.telemetry.config.request_id_header
        trace_id = self.request_id
        if name and trace_id is not None:
            headers.append((name, trace_id))
        self.status = status
        return status, headers, body

    @property
    def request_id(self) -> str | None:
        """The request's trace id (32 hex digits) when it is sampled, else ``None``: what the
        guard's refusals carry, and what the app finds at ``scope["distillguard.request_id"]``
        (``environ`` under WSGI) for its own error answers."""
        context = self.span.get_span_context()
        if context.is_valid and context.trace_flags.sampled:
            return f"{context.trace_id:032x}"
        return None

    def response_start(self, status: int) -> tuple[tuple[str, str], ...]:
        """The app started its response with ``status``; return the headers to add to it."""
        self.status = status
        decision = self.decision
        if decision is None:
            return ()
        interval = self.guard.policy.stream_recheck
        if interval is not None and 200 <= status < 300 and self.rechecks:
            self._recheck_at = self.guard.clock() + interval
        return decision.headers

    @property
    def rechecks(self) -> bool:
        """Whether the client is checked again while a successful answer streams (then the
        adapter asks :meth:`recheck_due` before sending each chunk of the body, and is ready to
        tell the app that the client left): a request the guard let through, with a risk
        policy, out of shadow mode, with ``Policy.stream_recheck`` set."""
        decision = self.decision
        guard = self.guard
        return (
            guard.risk is not None
            and guard.policy.stream_recheck is not None
            and decision is not None
            and decision.problem is None
            and not decision.shadow
            and decision.identity is not None
        )

    def recheck_due(self) -> bool:
        """Whether ``Policy.stream_recheck`` seconds went by since the last check."""
        at = self._recheck_at
        return at is not None and self.ending is None and self.guard.clock() >= at

    def recheck(self, events: bool) -> Generator[Effect, object, None]:
        """Check that the answer's client is not in the penalty box (reading the shared box,
        if any). When it is, :attr:`ending` becomes the last bytes to send (an ``error`` event
        when the answer is an event stream, ``events``; nothing otherwise): the adapter
        sends them at the next event boundary, ends the answer, drops what the app sends next
        and tells it the client left."""
        guard = self.guard
        decision = self.decision
        interval = guard.policy.stream_recheck
        if decision is None or decision.identity is None or interval is None:
            return
        now = guard.clock()
        self._recheck_at = now + interval
        left = yield from penalty_left(guard, decision.identity, now)
        if left is None:
            return
        self.ending = _stream_error(max(1, int(left) + 1)) if events else b""
        try:
            self.guard.telemetry.stream_ended(self.span, "risk:penalty_box")
        except Exception as exc:
            self._drop_span("response", exc)

    @property
    def rewrites(self) -> bool:
        """Whether the answer may be rewritten (a watermark, or a degraded request): then the
        adapter asks :meth:`marking` when the answer starts."""
        decision = self.decision
        return self.guard.watermark is not None or (
            decision is not None and decision.action is Action.DEGRADE
        )

    @property
    def plain_answer(self) -> bool:
        """Whether the app is asked for an uncompressed answer (``Accept-Encoding: identity``):
        a chat or completion answer that will be watermarked or stripped of its log
        probabilities must be readable. A compressing middleware outside the guard still
        compresses what the client gets."""
        decision = self.decision
        return (
            self.rewrites
            and decision is not None
            and decision.problem is None
            and decision.query is not None
            and decision.query.kind in ("chat", "completion")
        )

    def marking(self, status: int, content_type: str, encoding: str = "") -> ResponseMarking | None:
        """The rewriting of this answer: the watermark, and for a degraded request the log
        probabilities stripped (``None``: it passes unchanged; else the adapter drops its
        ``Content-Length``, and its ``Content-Encoding`` when :attr:`ResponseMarking.decodes`,
        and sends what the marking returns). A ``gzip`` or ``deflate`` answer is decoded; one
        in an encoding the standard library cannot read passes unchanged (counted on the
        ``distillguard.watermark.unmarked`` metric with reason ``encoding``)."""
        guard = self.guard
        watermark = guard.watermark
        decision = self.decision
        if decision is None or decision.query is None:
            return None
        strip = (
            decision.action is Action.DEGRADE
            and not decision.shadow
            and "logprobs" in guard.policy.degrade_fields
        )
        if watermark is None and not strip:
            return None
        if decision.problem is not None or decision.query.kind not in ("chat", "completion"):
            return None
        marking = ResponseMarking(watermark, strip)
        if not marking.start(status, content_type, encoding):
            if not readable(encoding) and 200 <= status < 300:
                self._unreadable = True
            return None
        self._marking = marking
        return marking

    def response_body(self, chunk: bytes, final: bool = False) -> None:
        """A chunk of the app's response body is passing through (unchanged); ``final`` when
        it is the last one."""
        decision = self.decision
        if decision is not None and decision.budget is not None:
            decision.budget.observe(chunk)
        if self._usage is not None:
            try:
                self._usage.feed(chunk)
                if final and not self._own:  # its owner may end the server span once this is sent
                    self._record_usage()
            except Exception as exc:
                self._drop_span("response", exc)

    def _record_usage(self) -> None:
        telemetry = self.guard.telemetry
        usage = telemetry.usage(self._usage, self.decision)
        self._usage = None
        if usage is not None:
            telemetry.finish(self.span, self.status, decision=self.decision, usage=usage, own=False)

    def settle(self) -> Generator[Effect, object, None]:
        """Effects to run once the response is complete (token reconciliation, once)."""
        decision = self.decision
        if decision is not None and decision.budget is not None:
            started = perf_counter()
            yield from decision.budget.settle(self.status)
            self._overhead += perf_counter() - started  # the guard's time after the response

    @property
    def leased(self) -> bool:
        """Whether the request holds a concurrency lease on the shared storage: the adapter
        then runs :meth:`renewal` as the answer streams and :meth:`give_back` on every path."""
        decision = self.decision
        return decision is not None and decision.budget is not None and decision.budget.leased

    def renewal_due(self) -> bool:
        """Whether half of the concurrency lease has gone by: :meth:`renewal` has an effect."""
        decision = self.decision
        slot = decision.budget.slot if decision is not None and decision.budget is not None else None
        return isinstance(slot, SharedSlot) and slot.renewal_due(self.guard.clock())

    def renewal(self) -> Generator[Effect, object, None]:
        """The lease's renewal, when half of it has gone by (nothing otherwise)."""
        decision = self.decision
        if decision is not None and decision.budget is not None:
            yield from decision.budget.renewal(self.guard.clock())

    def give_back(self) -> Generator[Effect, object, None]:
        """The lease's release (once; nothing without a lease)."""
        decision = self.decision
        if decision is not None and decision.budget is not None:
            yield from decision.budget.give_back()

    def detach(self) -> None:
        """Stop making the span current (the app may still be streaming)."""
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def finish(self, exc: BaseException | None = None, extra: dict[str, Any] | None = None) -> None:
        """End the exchange: record the status (and an app exception) and end the span."""
        self.detach()
        if self.decision is not None and self.decision.budget is not None:
            self.decision.budget.release()  # every path ends here: completion, disconnect, error
        telemetry = self.guard.telemetry
        decision = self.decision
        try:
            if self._pending is not None:  # ended before any decision
                self.span = telemetry.open(self._pending, None)
                self._pending = None
            usage = telemetry.usage(self._usage, decision) if self.span.is_recording() else None
            telemetry.finish(
                self.span,
                self.status,
                exc,
                extra,
                decision=decision,
                route=self.route,
                usage=usage,
                own=self._own,
            )
            if decision is not None:
                telemetry.metrics.record_duration(self._overhead, decision.action.value)
            if self._marking is not None and self._marking.overflowed:
                telemetry.metrics.record_unmarked("too_long")
            elif self._unreadable:
                telemetry.metrics.record_unmarked("encoding")
        except Exception as failure:
            self._drop_span("end", failure)

    def _drop_span(self, stage: str, exc: Exception) -> None:
        """Telemetry failed (a span processor, exporter or metric reader raised): log it, end
        the guard's own span if it was started, and go on without it. The request itself is
        never refused or lost because of its telemetry."""
        self.guard.telemetry.failed(stage, exc)
        span, self.span, self._pending, self._usage = self.span, INVALID_SPAN, None, None
        self.detach()
        if self._own and span is not INVALID_SPAN and stage != "end":
            with contextlib.suppress(Exception):  # already reported once for this stage
                span.end()
        self._own = True


def _stream_error(retry_after: int) -> bytes:
    """The last event of a stream cut because its client went into the penalty box: an
    OpenAI-style ``error`` object, which OpenAI's SDKs raise as an ``APIError``."""
    error = {
        "message": "This client's usage pattern is not allowed.",
        "type": "suspicious_usage",
        "code": "suspicious_usage",
        "param": None,
        "retry_after": retry_after,
    }
    return b"data: " + json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n\n"

"""OpenTelemetry: attribute names and the guard's span.

distillguard uses the OpenTelemetry *API* at run time and accepts a ``tracer_provider``; without
one it uses the global provider (a no-op until the application installs an SDK).

**Span placement.** Each guarded request gets one ``INTERNAL`` span named ``distillguard.guard``,
a child of whatever span is current (the server span of FastAPI's native telemetry, the contrib
ASGI/Flask instrumentation, or none). It starts before authentication and ends when the response
is complete, so the app's own spans are its children and the response status and usage are on
it. distillguard never starts a ``SERVER`` span, so it cannot duplicate one.

Attributes never carry raw prompts, tokens or secrets: the query is a fingerprint (a hash), the
client id can be hashed (on by default), strings are capped in length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

from ._version import __version__
from .decision import Action, Decision
from .errors import ConfigurationError
from .request import GuardRequest

__all__ = [
    "ATTR_AUTH_FAILURE",
    "ATTR_CLIENT_ID",
    "ATTR_CLIENT_TIER",
    "ATTR_DECISION",
    "ATTR_DETECTOR_SCORE",
    "ATTR_ERRORS",
    "ATTR_LIMIT_POLICY",
    "ATTR_LIMIT_REMAINING",
    "ATTR_QUERY_FINGERPRINT",
    "ATTR_QUERY_KIND",
    "ATTR_QUERY_LENGTH",
    "ATTR_REASONS",
    "ATTR_SCORE",
    "ATTR_SHADOW",
    "EVENT_DECISION",
    "SPAN_NAME",
    "TelemetryConfig",
    "Telemetry",
    "hash_identifier",
]

SPAN_NAME = "distillguard.guard"
EVENT_DECISION = "distillguard.decision"

ATTR_CLIENT_ID = "distillguard.client.id"
ATTR_CLIENT_TIER = "distillguard.client.tier"
ATTR_DECISION = "distillguard.decision"
ATTR_SHADOW = "distillguard.shadow"
ATTR_SCORE = "distillguard.score"
ATTR_REASONS = "distillguard.reasons"
ATTR_ERRORS = "distillguard.errors"
ATTR_AUTH_FAILURE = "distillguard.auth.failure"
ATTR_LIMIT_REMAINING = "distillguard.limit.remaining"
ATTR_LIMIT_POLICY = "distillguard.limit.policy"
ATTR_QUERY_FINGERPRINT = "distillguard.query.fingerprint"
ATTR_QUERY_KIND = "distillguard.query.kind"
ATTR_QUERY_LENGTH = "distillguard.query.length"
ATTR_DETECTOR_SCORE = "distillguard.detector.{}.score"

_HTTP_METHOD = "http.request.method"
_HTTP_STATUS = "http.response.status_code"
_URL_PATH = "url.path"
_GENAI_MODEL = "gen_ai.request.model"
_GENAI_MAX_TOKENS = "gen_ai.request.max_tokens"


def hash_identifier(value: str, key: bytes = b"") -> str:
    """The hashed form of a client id as it appears on spans (16 hex digits).

    Operators can compute it to find a known client in their traces.
    """
    return hashlib.blake2b(value.encode(), key=key, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """Telemetry settings.

    Args:
        hash_identifiers: record a hash of the client id instead of the id itself.
        hash_key: a secret key for that hash (up to 64 bytes), so that ids cannot be guessed by
            hashing candidates; operators with the key can still compute it.
        max_attribute_length: longer string attributes are cut.
        record_path: record ``url.path`` (turn off when paths carry identifiers).
    """

    hash_identifiers: bool = True
    hash_key: bytes = b""
    max_attribute_length: int = 256
    record_path: bool = True

    def __post_init__(self) -> None:
        if len(self.hash_key) > 64:
            raise ConfigurationError("TelemetryConfig.hash_key must be at most 64 bytes")
        if self.max_attribute_length < 16:
            raise ConfigurationError("TelemetryConfig.max_attribute_length must be at least 16")


class Telemetry:
    """Starts the guard's span and records decisions on it.

    Args:
        config: telemetry settings.
        tracer_provider: the provider to use (the global one when ``None``).
    """

    def __init__(self, config: TelemetryConfig, tracer_provider: TracerProvider | None = None) -> None:
        self.config = config
        self.tracer: Tracer = trace.get_tracer("distillguard", __version__, tracer_provider)
        self._ids: dict[str, str] = {}

    def start(self, request: GuardRequest) -> Span:
        """Start the guard's span for ``request`` (a child of the current span)."""
        attributes: dict[str, Any] = {_HTTP_METHOD: request.method}
        if self.config.record_path:
            attributes[_URL_PATH] = self._cap(request.path)
        return self.tracer.start_span(SPAN_NAME, kind=SpanKind.INTERNAL, attributes=attributes)

    def _cap(self, value: str) -> str:
        limit = self.config.max_attribute_length
        return value if len(value) <= limit else value[:limit]

    def client_attribute(self, client_id: str) -> str:
        """The value recorded for ``client_id`` (hashed when configured)."""
        if not self.config.hash_identifiers:
            return self._cap(client_id)
        hashed = self._ids.get(client_id)
        if hashed is None:
            hashed = hash_identifier(client_id, self.config.hash_key)
            if len(self._ids) >= 100_000:
                self._ids.clear()
            self._ids[client_id] = hashed
        return hashed

    def attributes(self, decision: Decision) -> dict[str, Any]:
        """The span attributes describing ``decision`` (pure; no raw request contents)."""
        attrs: dict[str, Any] = {ATTR_DECISION: decision.action.value}
        identity = decision.identity
        if identity is not None:
            attrs[ATTR_CLIENT_ID] = self.client_attribute(identity.client_id)
            attrs[ATTR_CLIENT_TIER] = self._cap(identity.tier)
        if decision.shadow:
            attrs[ATTR_SHADOW] = True
        if decision.auth_failure is not None:
            attrs[ATTR_AUTH_FAILURE] = decision.auth_failure
        query = decision.query
        if query is not None:
            attrs[ATTR_QUERY_KIND] = query.kind
            if query.text:
                attrs[ATTR_QUERY_FINGERPRINT] = query.fingerprint
                attrs[ATTR_QUERY_LENGTH] = len(query.text)
            if query.model is not None:
                attrs[_GENAI_MODEL] = self._cap(query.model)
            if query.max_tokens is not None:
                attrs[_GENAI_MAX_TOKENS] = query.max_tokens
        if decision.limits:
            tightest = min(decision.limits, key=lambda o: o.remaining)
            attrs[ATTR_LIMIT_REMAINING] = tightest.remaining
            attrs[ATTR_LIMIT_POLICY] = tightest.check.policy
        if decision.results:
            attrs[ATTR_SCORE] = decision.score
            for result in decision.results:
                attrs[ATTR_DETECTOR_SCORE.format(result.detector)] = result.score
        if decision.reasons:
            attrs[ATTR_REASONS] = [self._cap(r) for r in decision.reasons[:32]]
        if decision.errors:
            attrs[ATTR_ERRORS] = list(decision.errors[:32])
        return attrs

    def record(self, span: Span, decision: Decision) -> None:
        """Record ``decision`` on ``span``; add a span event unless the request was allowed."""
        if not span.is_recording():
            return
        attrs = self.attributes(decision)
        span.set_attributes(attrs)
        if decision.action is not Action.ALLOW:
            event: dict[str, Any] = {ATTR_DECISION: decision.action.value, ATTR_SCORE: decision.score}
            if decision.reasons:
                event[ATTR_REASONS] = attrs[ATTR_REASONS]
            if decision.shadow:
                event[ATTR_SHADOW] = True
            span.add_event(EVENT_DECISION, event)

    def finish(
        self,
        span: Span,
        status: int | None,
        exc: BaseException | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the response status (and an app exception, unchanged) and end ``span``."""
        if span.is_recording():
            if status is not None:
                span.set_attribute(_HTTP_STATUS, status)
            if extra:
                span.set_attributes(extra)
            if exc is not None:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        span.end()

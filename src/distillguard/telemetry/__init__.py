"""OpenTelemetry: the guard's span, its attributes and its metrics.

distillguard uses the OpenTelemetry *API* at run time and accepts a ``tracer_provider`` and a
``meter_provider``; without them it uses the global providers (no-ops until the application
installs an SDK).

* :mod:`.spans`: one span ``distillguard.guard`` per guarded request, placed so that it never
  duplicates or demotes a framework's ``SERVER`` span (see there).
* :mod:`.metrics`: decisions, detector verdicts, limiter fallbacks, risk scores, the guard's own
  overhead and the number of tracked clients, recorded off the request's critical path.
  The instruments live in :mod:`.instruments`, one set per meter provider.
* :mod:`.attributes`: what the span records, capped and hashed (:mod:`.config`).
* :mod:`.usage`: the response's token ``usage`` (JSON and SSE) for ``gen_ai.usage.*``.
* :mod:`.names`: every name, following the stable HTTP and the GenAI semantic conventions.
* :mod:`.propagation`: trace context and routes from ASGI scopes and WSGI environs.
* :mod:`.flask`: a ``before_request`` hook that links Flask's server span to the guard's.

Hygiene: attributes never carry raw prompts, tokens or secrets (the query is a fingerprint, the
client id is hashed by default), strings and lists are capped, and so is the number of
attributes per span. See ``docs/telemetry.md``.
"""

from __future__ import annotations

from .config import TelemetryConfig, hash_identifier
from .metrics import ClientTracker, GuardMetrics
from .names import (
    ATTR_AUTH_FAILURE,
    ATTR_CLIENT_ID,
    ATTR_CLIENT_TENANT,
    ATTR_CLIENT_TIER,
    ATTR_DECISION,
    ATTR_DETECTOR,
    ATTR_DETECTOR_SCORE,
    ATTR_DETECTOR_VERDICT,
    ATTR_ERRORS,
    ATTR_LIMIT_POLICY,
    ATTR_LIMIT_REMAINING,
    ATTR_LIMITER_OUTCOME,
    ATTR_QUERY_FINGERPRINT,
    ATTR_QUERY_KIND,
    ATTR_QUERY_LENGTH,
    ATTR_REASONS,
    ATTR_SCORE,
    ATTR_SHADOW,
    EVENT_DECISION,
    METRIC_CLIENTS,
    METRIC_DECISIONS,
    METRIC_DETECTOR_VERDICTS,
    METRIC_DURATION,
    METRIC_GUARD_ERRORS,
    METRIC_LIMITER_FALLBACKS,
    METRIC_SCORE,
    METRIC_WATERMARK_UNMARKED,
    SPAN_NAME,
)
from .spans import Telemetry

__all__ = [
    "ATTR_AUTH_FAILURE",
    "ATTR_CLIENT_ID",
    "ATTR_CLIENT_TENANT",
    "ATTR_CLIENT_TIER",
    "ATTR_DECISION",
    "ATTR_DETECTOR",
    "ATTR_DETECTOR_SCORE",
    "ATTR_DETECTOR_VERDICT",
    "ATTR_ERRORS",
    "ATTR_LIMITER_OUTCOME",
    "ATTR_LIMIT_POLICY",
    "ATTR_LIMIT_REMAINING",
    "ATTR_QUERY_FINGERPRINT",
    "ATTR_QUERY_KIND",
    "ATTR_QUERY_LENGTH",
    "ATTR_REASONS",
    "ATTR_SCORE",
    "ATTR_SHADOW",
    "EVENT_DECISION",
    "METRIC_CLIENTS",
    "METRIC_DECISIONS",
    "METRIC_DETECTOR_VERDICTS",
    "METRIC_DURATION",
    "METRIC_GUARD_ERRORS",
    "METRIC_LIMITER_FALLBACKS",
    "METRIC_SCORE",
    "METRIC_WATERMARK_UNMARKED",
    "SPAN_NAME",
    "ClientTracker",
    "GuardMetrics",
    "Telemetry",
    "TelemetryConfig",
    "hash_identifier",
]

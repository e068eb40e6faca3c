"""Every span, event, attribute and metric name distillguard records.

Standard names follow the *stable* OpenTelemetry HTTP semantic conventions (whatever
``OTEL_SEMCONV_STABILITY_OPT_IN`` says) and the GenAI conventions; distillguard's own names live
under ``distillguard.``. ``docs/telemetry.md`` has the reference tables.
"""

from __future__ import annotations

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
    "ATTR_STATE_OUTCOME",
    "ATTR_LIMIT_POLICY",
    "ATTR_LIMIT_REMAINING",
    "ATTR_QUERY_FINGERPRINT",
    "ATTR_QUERY_KIND",
    "ATTR_QUERY_LENGTH",
    "ATTR_REASONS",
    "ATTR_RELEASE_SCOPE",
    "ATTR_SCORE",
    "ATTR_SHADOW",
    "ATTR_STREAM_REASON",
    "ATTR_USAGE_SOURCE",
    "ATTR_WATERMARK_REASON",
    "CLIENT_ADDRESS",
    "ENDUSER_ID",
    "ENDUSER_PSEUDO_ID",
    "ERROR_TYPE",
    "EVENT_DECISION",
    "EVENT_STREAM_ENDED",
    "GEN_AI_MAX_TOKENS",
    "GEN_AI_MODEL",
    "GEN_AI_OPERATION",
    "GEN_AI_USAGE_INPUT",
    "GEN_AI_USAGE_OUTPUT",
    "HTTP_METHOD",
    "HTTP_ROUTE",
    "HTTP_STATUS",
    "METRIC_CLIENTS",
    "METRIC_DECISIONS",
    "METRIC_DETECTOR_VERDICTS",
    "METRIC_DURATION",
    "METRIC_GUARD_ERRORS",
    "METRIC_LIMITER_FALLBACKS",
    "METRIC_RELEASES",
    "METRIC_SCORE",
    "METRIC_STATE_EXCHANGES",
    "METRIC_STREAMS_ENDED",
    "METRIC_WATERMARK_UNMARKED",
    "SPAN_NAME",
    "URL_PATH",
    "USER_AGENT",
]

SPAN_NAME = "distillguard.guard"
"""The guard's ``INTERNAL`` span, one per guarded request."""
EVENT_DECISION = "distillguard.decision"
"""Span event added when the decision is not ``allow``."""
EVENT_STREAM_ENDED = "distillguard.stream.ended"
"""Span event added when a streamed answer is cut because its client went into the penalty box
(``Policy.stream_recheck``); the span also gets ``distillguard.stream.ended = true``."""

# -- distillguard's own span attributes ------------------------------------------------------
ATTR_CLIENT_ID = "distillguard.client.id"
ATTR_CLIENT_TIER = "distillguard.client.tier"
ATTR_CLIENT_TENANT = "distillguard.client.tenant"
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
ATTR_USAGE_SOURCE = "distillguard.usage.source"
"""``deltas`` when the output tokens were counted from a stream that reported no ``usage``."""
ATTR_DETECTOR_SCORE = "distillguard.detector.{}.score"
"""Per-detector score; ``{}`` is the detector's name."""

# -- metric attributes -----------------------------------------------------------------------
ATTR_DETECTOR = "distillguard.detector.name"
ATTR_DETECTOR_VERDICT = "distillguard.detector.verdict"
ATTR_LIMITER_OUTCOME = "distillguard.limiter.outcome"
ATTR_STATE_OUTCOME = "distillguard.state.outcome"
ATTR_WATERMARK_REASON = "distillguard.watermark.reason"
ATTR_STREAM_REASON = "distillguard.stream.reason"
ATTR_RELEASE_SCOPE = "distillguard.release.scope"
ERROR_TYPE = "error.type"

# -- stable HTTP semantic conventions --------------------------------------------------------
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
CLIENT_ADDRESS = "client.address"
ENDUSER_ID = "enduser.id"
"""The client id, when identifiers are recorded raw (``TelemetryConfig(hash_identifiers=False)``)."""
ENDUSER_PSEUDO_ID = "enduser.pseudo.id"
"""The client id's keyed hash (the default)."""
USER_AGENT = "user_agent.original"

# -- GenAI semantic conventions --------------------------------------------------------------
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_MODEL = "gen_ai.request.model"
GEN_AI_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_USAGE_INPUT = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT = "gen_ai.usage.output_tokens"

# -- metrics ---------------------------------------------------------------------------------
METRIC_DECISIONS = "distillguard.decisions"
METRIC_DETECTOR_VERDICTS = "distillguard.detector.verdicts"
METRIC_LIMITER_FALLBACKS = "distillguard.limiter.fallbacks"
METRIC_SCORE = "distillguard.risk.score"
METRIC_DURATION = "distillguard.guard.duration"
METRIC_CLIENTS = "distillguard.clients.tracked"
METRIC_STATE_EXCHANGES = "distillguard.detector.state.exchanges"
METRIC_GUARD_ERRORS = "distillguard.guard.errors"
METRIC_WATERMARK_UNMARKED = "distillguard.watermark.unmarked"
METRIC_STREAMS_ENDED = "distillguard.streams.ended"
METRIC_RELEASES = "distillguard.risk.releases"

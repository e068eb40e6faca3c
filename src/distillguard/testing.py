"""Helpers for testing an app guarded by distillguard, and your own detectors.

They do for a guarded app what ``structlog.testing`` does for logging: real tokens, detectors
whose verdict the test sets, and the guard's spans captured in memory. Nothing here is mocked:
tokens are signed with PyJWT, spans come from the OpenTelemetry SDK.

Example::

    from distillguard import DistillGuardMiddleware, Guard
    from distillguard.testing import StaticScoreDetector, capture_spans, jwt_config, make_token

    def test_a_blocked_client_gets_429():
        with capture_spans() as telemetry:
            guard = Guard(
                jwt=jwt_config(),
                detectors=[StaticScoreDetector(1.0)],
                tracer_provider=telemetry.tracer_provider,
            )
            app.add_middleware(DistillGuardMiddleware, guard=guard)
            response = TestClient(app).post("/v1/chat/completions", json=body,
                                            headers={"authorization": f"Bearer {make_token()}"})
            assert response.status_code == 429
            assert telemetry.decisions() == ["block"]
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .detectors import DetectorResult, Observation
from .identity import JWTConfig
from .telemetry import names

__all__ = [
    "TEST_AUDIENCE",
    "TEST_ISSUER",
    "TEST_SECRET",
    "CapturedTelemetry",
    "RecordingDetector",
    "StaticScoreDetector",
    "capture_spans",
    "jwt_config",
    "make_token",
]

TEST_SECRET = b"distillguard-testing-secret-not-for-production-use!"
"""The HS256 secret :func:`jwt_config` and :func:`make_token` share by default (tests only)."""
TEST_ISSUER = "https://issuer.test"
"""The issuer :func:`jwt_config` accepts and :func:`make_token` writes by default."""
TEST_AUDIENCE = "model-api"
"""The audience :func:`jwt_config` accepts and :func:`make_token` writes by default."""


def jwt_config(**overrides: Any) -> JWTConfig:
    """A :class:`~distillguard.JWTConfig` that accepts :func:`make_token`'s default tokens
    (HS256 with :data:`TEST_SECRET`, :data:`TEST_ISSUER`, :data:`TEST_AUDIENCE`); keywords
    override any field."""
    options: dict[str, Any] = {
        "algorithms": ["HS256"],
        "key": TEST_SECRET,
        "issuer": TEST_ISSUER,
        "audience": TEST_AUDIENCE,
    }
    options.update(overrides)
    return JWTConfig(**options)


def make_token(
    sub: str = "client-1",
    *,
    tier: str | None = None,
    scopes: Sequence[str] = (),
    ttl: float = 300.0,
    key: Any = TEST_SECRET,
    algorithm: str = "HS256",
    issuer: str = TEST_ISSUER,
    audience: str = TEST_AUDIENCE,
    kid: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A real signed JWT that :func:`jwt_config` accepts.

    Args:
        sub: the subject (the client id with the default identity claim).
        tier: the ``tier`` claim, if any.
        scopes: written as the space-separated ``scope`` claim.
        ttl: seconds until ``exp`` (negative for an expired token).
        key: the signing key: the HMAC secret, or a private key for RS*, PS*, ES* and EdDSA.
        algorithm: the JWS algorithm.
        issuer: the ``iss`` claim.
        audience: the ``aud`` claim.
        kid: the ``kid`` header, if any.
        now: the issue time (unix seconds; the current time by default).
        claims: more claims; a claim given as ``None`` is left out (``exp=None`` drops ``exp``).
    """
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": sub, "iat": issued}
    payload["exp"] = issued + int(ttl)
    if tier is not None:
        payload["tier"] = tier
    if scopes:
        payload["scope"] = " ".join(scopes)
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"kid": kid} if kid is not None else None
    return pyjwt.encode(payload, key, algorithm=algorithm, headers=headers)


class StaticScoreDetector:
    """A detector that gives every request the same score, with ``reasons`` and ``signals``;
    set :attr:`value` between requests to script a verdict.

    Args:
        value: the score of every request (0 to 1).
        name: the detector's name (on the span and in the verdict's reasons).
        reasons: the reasons given when the score is above 0.
        signals: numeric signals recorded on the span.
    """

    def __init__(
        self,
        value: float = 0.0,
        *,
        name: str = "static",
        reasons: Sequence[str] = ("static",),
        signals: Mapping[str, float] | None = None,
    ) -> None:
        self.name = name
        self.value = value
        self.reasons = tuple(reasons)
        self.signals = dict(signals or {})

    def score(self, observation: Observation) -> DetectorResult:
        """The configured verdict, whatever the request."""
        reasons = self.reasons if self.value > 0 else ()
        return DetectorResult(self.name, self.value, reasons, dict(self.signals))


class RecordingDetector:
    """Wraps a detector (or scores 0 alone) and records every observation and result, so a
    test can assert what the guard showed its detectors (the parsed query, the identity, the
    route) and what they answered.

    Args:
        inner: the detector to wrap; ``None`` scores every request 0.
        name: the name, when ``inner`` has none.

    Attributes:
        observations: every :class:`~distillguard.detectors.Observation`, in order.
        results: every :class:`~distillguard.detectors.DetectorResult`, in order.
    """

    def __init__(self, inner: Any = None, *, name: str = "recording") -> None:
        self.inner = inner
        self.name: str = getattr(inner, "name", name)
        self.observations: list[Observation] = []
        self.results: list[DetectorResult] = []

    def score(self, observation: Observation) -> DetectorResult:
        """Record ``observation``, score it with the wrapped detector, record the result."""
        self.observations.append(observation)
        result = self.inner.score(observation) if self.inner is not None else DetectorResult(self.name, 0.0)
        self.results.append(result)
        return result


@dataclass(frozen=True)
class CapturedTelemetry:
    """Spans recorded in memory (see :func:`capture_spans`).

    Attributes:
        tracer_provider: pass it to :class:`~distillguard.Guard` (``tracer_provider=``).
        exporter: the in-memory exporter holding the finished spans.
    """

    tracer_provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def guard_spans(self) -> list[ReadableSpan]:
        """The guard's spans (``distillguard.guard``), one per guarded request."""
        return [s for s in self.spans() if s.name == names.SPAN_NAME]

    def decisions(self) -> list[str]:
        """The decision of each guarded request (``allow``, ``flag``, ``block``...), in order."""
        return [str((s.attributes or {}).get(names.ATTR_DECISION)) for s in self.guard_spans()]

    def clear(self) -> None:
        """Forget the spans recorded so far."""
        self.exporter.clear()


@contextmanager
def capture_spans() -> Iterator[CapturedTelemetry]:
    """A private SDK tracer provider whose spans are kept in memory (never the global
    provider); shut down on exit."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield CapturedTelemetry(provider, exporter)
    finally:
        provider.shutdown()

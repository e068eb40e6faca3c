"""Releasing a client in one process (``memory://``): its risk, penalty box and detector
history are forgotten; other clients and the limit windows are not touched."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import Guard, LimitConfig, Policy
from distillguard.detectors import DetectorResult, Observation
from distillguard.detectors._protocol import forget_client
from distillguard.risk import RiskPolicy
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.redis.test_release import Persistent


def guard(default: str = "100/minute") -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default=default),
        detectors=[Persistent()],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
    )


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_released_client_starts_afresh(kind: str) -> None:
    """Blocked on its history and boxed on every route; released, it is admitted, and blocked
    again only once its new history says so. Another boxed client stays boxed."""
    h = Harness(kind, guard())
    thief, other = make_token(sub="thief"), make_token(sub="other")
    try:
        assert [h.call(chat_body(), token=thief)[0] for _ in range(4)] == [200, 200, 429, 429]
        assert [h.call(chat_body(), token=other)[0] for _ in range(3)] == [200, 200, 429]
        assert h.guard.risk.boxed == 2
        assert h.guard.release("thief") is False  # memory: this process only
        assert h.guard.risk.boxed == 1
        assert [h.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
        status, _, body = h.call(chat_body(), token=other)
        assert status == 429 and json.loads(body)["code"] == "suspicious_usage"
    finally:
        h.close()


class ReleasedMidway(Persistent):
    """Scores as :class:`Persistent`, and at the client's third request has an operator release
    the client while that request is being judged (after its history was scored)."""

    name = "persistent"

    def __init__(self) -> None:
        super().__init__()
        self.guard: Guard | None = None

    def score(self, observation: Observation) -> DetectorResult:
        result = super().score(observation)
        if result.score and self.guard is not None:
            self.guard.release(observation.client_id)
        return result


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_release_voids_the_verdict_of_a_request_judged_meanwhile(
    kind: str, tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """A request scored on the client's history before a release, and assessed after it, is
    not blocked on that history: it passes (``risk:released``), the client is not boxed again,
    and its next requests start afresh."""
    detector = ReleasedMidway()
    g = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="100/minute"),
        detectors=[detector],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
        tracer_provider=tracer_provider,
    )
    detector.guard = g
    h = Harness(kind, g)
    try:
        assert [h.call(chat_body())[0] for _ in range(3)] == [200, 200, 200]
        assert g.risk.boxed == 0 and g.status("client-1").level == 0
        span = [
            s
            for s in span_exporter.get_finished_spans()
            if s.attributes and "distillguard.reasons" in s.attributes
        ][-1]
        assert "risk:released" in span.attributes["distillguard.reasons"]  # type: ignore[index,operator]
        assert [h.call(chat_body())[0] for _ in range(3)] == [200, 200, 200]  # released again each time
    finally:
        h.close()


def test_a_release_names_the_tenant_when_clients_are_kept_per_tenant() -> None:
    """With two issuers the same ``sub`` is two clients: releasing one leaves the other boxed."""
    g = Guard(
        jwt=jwt_config(issuer=["https://a.example", "https://b.example"]),
        limits=LimitConfig(default="100/minute"),
        detectors=[Persistent()],
        policy=Policy(risk=RiskPolicy()),
    )
    h = Harness("wsgi", g)
    a, b = (make_token(sub="thief", iss=f"https://{t}.example") for t in "ab")
    try:
        for token in (a, b):
            assert [h.call(chat_body(), token=token)[0] for _ in range(3)] == [200, 200, 429]
        g.release("thief", tenant="https://a.example")
        assert h.call(chat_body(), token=a)[0] == 200
        assert h.call(chat_body(), token=b)[0] == 429
    finally:
        h.close()


def test_a_release_leaves_the_limit_windows_alone() -> None:
    """A release is about the risk policy: the client's quota stays spent."""
    h = Harness("wsgi", Guard(jwt=jwt_config(), limits=LimitConfig(default="2/minute")))
    try:
        assert [h.call(chat_body())[0] for _ in range(3)] == [200, 200, 429]
        assert h.guard.release("client-1") is False
        assert h.call(chat_body())[0] == 429
    finally:
        h.close()


def test_a_release_is_logged_with_the_client_as_the_spans_record_it(caplog: pytest.LogCaptureFixture) -> None:
    """An audit line per release, the client hashed as on the spans (the default) or not."""
    from distillguard import TelemetryConfig
    from distillguard.telemetry.config import hash_identifier

    with caplog.at_level("WARNING", logger="distillguard"):
        assert guard().release("thief") is False
        Guard(jwt=jwt_config(), telemetry=TelemetryConfig(hash_identifiers=False)).release("thief")
    lines = [r.getMessage() for r in caplog.records if "released" in r.getMessage()]
    assert lines == [
        f"distillguard: client {hash_identifier('thief')} released (in this process)",
        "distillguard: client thief released (in this process)",
    ]


def test_arelease_in_memory() -> None:
    g = guard()
    h = Harness("wsgi", g)
    try:
        assert [h.call(chat_body(), token=make_token(sub="thief"))[0] for _ in range(3)] == [200, 200, 429]
        assert asyncio.run(g.arelease("thief")) is False
        assert h.call(chat_body(), token=make_token(sub="thief"))[0] == 200
    finally:
        h.close()


def test_forget_client_uses_the_detector_s_own_forget_and_survives_its_errors() -> None:
    class Own:
        def __init__(self) -> None:
            self.forgotten: list[str] = []

        def forget(self, client_id: str) -> None:
            self.forgotten.append(client_id)

    class Broken:
        def forget(self, client_id: str) -> None:
            raise RuntimeError("boom")

    own = Own()
    assert forget_client(own, "c") is True and own.forgotten == ["c"]
    assert forget_client(Broken(), "c") is False
    assert forget_client(object(), "c") is False  # nothing per client to forget


def test_status_in_one_process() -> None:
    """With ``memory://`` the status is this process's: box, level, risk and driver."""
    h = Harness("wsgi", guard())
    try:
        fresh = h.guard.status("thief")
        assert (fresh.boxed_for, fresh.level, fresh.risk, fresh.driver, fresh.shared) == (
            None,
            0,
            0.0,
            "",
            False,
        )
        assert [h.call(chat_body(), token=make_token(sub="thief"))[0] for _ in range(3)] == [200, 200, 429]
        held = h.guard.status("thief")
        assert held.boxed_for is not None and 590 < held.boxed_for <= 600
        assert held.level == 3 and held.risk >= 0.9 and held.driver == "persistent" and not held.shared
        h.guard.release("thief")
        assert h.guard.status("thief").boxed_for is None
    finally:
        h.close()


def test_status_needs_a_risk_policy() -> None:
    from distillguard import ConfigurationError

    with pytest.raises(ConfigurationError, match="risk policy"):
        Guard(jwt=jwt_config()).status("thief")

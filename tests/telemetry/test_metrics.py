"""The guard's metrics through the OpenTelemetry metrics API, read back from a real SDK
``MeterProvider`` with an in-memory reader: decisions by action, detector verdicts, limiter
fallbacks, the risk-score and overhead histograms, and the tracked-clients gauge."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from distillguard import DetectorResult, Guard, LimitConfig, Observation
from distillguard.flask import DistillGuard
from distillguard.telemetry import (
    ATTR_DECISION,
    ATTR_DETECTOR,
    ATTR_DETECTOR_VERDICT,
    ATTR_LIMITER_OUTCOME,
    ATTR_SHADOW,
    METRIC_CLIENTS,
    METRIC_DECISIONS,
    METRIC_DETECTOR_VERDICTS,
    METRIC_DURATION,
    METRIC_GUARD_ERRORS,
    METRIC_LIMITER_FALLBACKS,
    METRIC_SCORE,
    METRIC_WATERMARK_UNMARKED,
    ClientTracker,
)
from tests.helpers import RaisingDetector, StaticDetector, make_token
from tests.telemetry.apps import CHAT_PATH, chat_body, flask_app
from tests.telemetry.conftest import metric_points, value_of

ALLOWED_METRIC_ATTRIBUTES = {
    ATTR_DECISION,
    ATTR_SHADOW,
    ATTR_DETECTOR,
    ATTR_DETECTOR_VERDICT,
    ATTR_LIMITER_OUTCOME,
    "distillguard.watermark.reason",
    "error.type",
}


def serve(guard: Guard, *, delay: float = 0.0) -> Any:
    """A Flask chat app guarded by ``guard``; the endpoint sleeps ``delay`` seconds."""
    app = flask_app()
    if delay:
        view = app.view_functions["chat"]

        def slow() -> Any:
            time.sleep(delay)
            return view()

        app.view_functions["chat"] = slow
    DistillGuard(guard, app)
    return app


def post(app: Any, token: str | None = None) -> int:
    """POST a chat request; close the response (the exchange ends there)."""
    response = app.test_client().post(
        CHAT_PATH,
        data=chat_body(),
        headers={"authorization": f"Bearer {token or make_token()}", "content-type": "application/json"},
    )
    response.get_data()
    response.close()
    return int(response.status_code)


def test_instruments_exist_from_construction(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Building a guard registers its instruments: the tracked-clients gauge reports 0 at once."""
    guard_factory(meter_provider=meter_provider)
    points = metric_points(metric_reader)
    assert value_of(points[METRIC_CLIENTS]) == 0
    assert METRIC_DECISIONS not in points  # nothing counted yet


def test_decisions_are_counted_by_action(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Two allowed, one rate-limited and one unauthenticated request give those counts."""
    app = serve(guard_factory(meter_provider=meter_provider, limits=LimitConfig(default="2/minute")))
    assert [post(app), post(app), post(app), post(app, token="garbage")] == [200, 200, 429, 401]
    decisions = metric_points(metric_reader)[METRIC_DECISIONS]
    assert value_of(decisions, distillguard__decision="allow") == 2
    assert value_of(decisions, distillguard__decision="rate_limited") == 1
    assert value_of(decisions, distillguard__decision="unauthenticated") == 1
    assert sum(point.value for _, point in decisions) == 4
    # cumulative: a second collection after one more request adds to the same series
    post(app, token="garbage")
    decisions = metric_points(metric_reader)[METRIC_DECISIONS]
    assert value_of(decisions, distillguard__decision="unauthenticated") == 2


def test_detector_verdicts_and_risk_score_histogram(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Detector results count by their own verdict (or error); aggregate scores fill the histogram."""
    detectors = [StaticDetector(0.6, name="a"), StaticDetector(0.1, name="b"), RaisingDetector(name="broken")]
    app = serve(guard_factory(meter_provider=meter_provider, detectors=detectors))
    assert [post(app), post(app)] == [200, 200]
    points = metric_points(metric_reader)
    verdicts = points[METRIC_DETECTOR_VERDICTS]
    assert value_of(verdicts, distillguard__detector__name="a", distillguard__detector__verdict="flag") == 2
    assert value_of(verdicts, distillguard__detector__name="b", distillguard__detector__verdict="allow") == 2
    assert (
        value_of(verdicts, distillguard__detector__name="broken", distillguard__detector__verdict="error")
        == 2
    )
    decisions = points[METRIC_DECISIONS]
    assert value_of(decisions, distillguard__decision="flag") == 2
    [(score_attrs, score)] = points[METRIC_SCORE]
    assert score_attrs == {}
    assert score.count == 2
    assert score.sum == pytest.approx(1.2)
    assert score.max == pytest.approx(0.6)


def test_shadow_mode_counts_what_it_would_have_refused(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Shadow mode (R17): nothing is refused, and the metrics say what would have been: the
    decisions under their would-be action with ``distillguard.shadow``, the detector's verdicts
    and the score histogram, as in enforcing mode."""
    from distillguard import Policy

    guard = guard_factory(
        meter_provider=meter_provider,
        detectors=[StaticDetector(0.95, name="sure")],
        policy=Policy(shadow=True),
    )
    app = serve(guard)
    assert [post(app), post(app), post(app)] == [200, 200, 200]
    points = metric_points(metric_reader)
    decisions = points[METRIC_DECISIONS]
    assert value_of(decisions, distillguard__decision="block", distillguard__shadow=True) == 3
    assert value_of(decisions, distillguard__decision="block") == 0  # nothing enforced
    verdicts = points[METRIC_DETECTOR_VERDICTS]
    assert (
        value_of(verdicts, distillguard__detector__name="sure", distillguard__detector__verdict="block") == 3
    )
    [(_, score)] = points[METRIC_SCORE]
    assert score.count == 3 and score.max == pytest.approx(0.95)


def test_overhead_histogram_excludes_the_app(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """The overhead histogram gets one value per request by decision, without the app's 50 ms."""
    app = serve(guard_factory(meter_provider=meter_provider), delay=0.05)
    assert [post(app), post(app), post(app, token="garbage")] == [200, 200, 401]
    durations = {
        attrs[ATTR_DECISION]: point for attrs, point in metric_points(metric_reader)[METRIC_DURATION]
    }
    assert durations["allow"].count == 2
    assert durations["unauthenticated"].count == 1
    assert 0 < durations["allow"].min <= durations["allow"].max < 0.05


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_limiter_fallbacks_are_counted(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """With the shared storage unreachable, each local-fallback decision is counted by outcome."""
    limits = LimitConfig(
        default="100/minute",
        storage_uri=f"redis://127.0.0.1:{_dead_port()}",
        storage_options={"socket_connect_timeout": 0.2},
    )
    app = serve(guard_factory(meter_provider=meter_provider, limits=limits))
    assert [post(app), post(app), post(app)] == [200, 200, 200]
    fallbacks = metric_points(metric_reader)[METRIC_LIMITER_FALLBACKS]
    assert value_of(fallbacks, distillguard__limiter__outcome="local_fallback") == 3
    assert value_of(fallbacks, distillguard__limiter__outcome="fail_open") == 0


@pytest.mark.parametrize(("outage", "status"), [("fail_open", 200), ("fail_closed", 503)])
def test_fail_open_and_fail_closed_decisions_are_counted(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    outage: str,
    status: int,
) -> None:
    """R6: under ``fail_open`` the storage's outage admits each request uncounted, under
    ``fail_closed`` refuses it with 503, and the collector sees how many, by outcome."""
    limits = LimitConfig(
        default="100/minute",
        storage_uri=f"redis://127.0.0.1:{_dead_port()}",
        storage_options={"socket_connect_timeout": 0.2},
        outage=outage,  # type: ignore[arg-type]
    )
    app = serve(guard_factory(meter_provider=meter_provider, limits=limits))
    assert [post(app), post(app), post(app)] == [status] * 3
    fallbacks = metric_points(metric_reader)[METRIC_LIMITER_FALLBACKS]
    assert value_of(fallbacks, distillguard__limiter__outcome=outage) == 3
    assert value_of(fallbacks, distillguard__limiter__outcome="local_fallback") == 0


class Tracking:
    """A detector that tracks clients (implements :class:`ClientTracker`)."""

    def __init__(self, name: str, count: int | None) -> None:
        self.name = name
        self.count = count

    def score(self, observation: Observation) -> DetectorResult:
        return DetectorResult(self.name, 0.0)

    def tracked_clients(self) -> int:
        if self.count is None:
            raise RuntimeError("tracker bug")
        return self.count


def test_tracked_clients_gauge_reads_the_detectors(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gauge reports each tracking detector by name; a raising tracker is logged and skipped."""
    good, broken = Tracking("near_dup", 42), Tracking("buggy", None)
    assert isinstance(good, ClientTracker)
    guard = guard_factory(meter_provider=meter_provider, detectors=[good, broken])
    with caplog.at_level(logging.ERROR, logger="distillguard.telemetry"):
        clients = metric_points(metric_reader)[METRIC_CLIENTS]
    assert clients == [({ATTR_DETECTOR: "near_dup"}, clients[0][1])]
    assert clients[0][1].value == 42
    assert "buggy" in caplog.text
    good.count = 7
    assert (
        value_of(metric_points(metric_reader)[METRIC_CLIENTS], distillguard__detector__name="near_dup") == 7
    )
    assert guard.telemetry.metrics is not None


def test_metric_attributes_are_low_cardinality(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """More clients add no metric series: attributes never carry client ids or their hashes."""
    guard = guard_factory(meter_provider=meter_provider, detectors=[StaticDetector(0.6, name="a")])
    app = serve(guard)

    def series_after(subjects: list[str]) -> int:
        for subject in subjects:
            assert post(app, token=make_token(sub=subject)) == 200
        hashed = {guard.telemetry.client_attribute(s) for s in subjects}
        count = 0
        for name, entries in metric_points(metric_reader).items():
            for attrs, _ in entries:
                count += 1
                assert set(attrs) <= ALLOWED_METRIC_ATTRIBUTES, (name, attrs)
                for value in attrs.values():
                    assert value not in subjects and value not in hashed
        return count

    first = series_after([f"client-{i}" for i in range(20)])
    assert series_after([f"other-{i}" for i in range(20)]) == first


def test_tracked_clients_gauge_reads_the_risk_engine(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """With a risk policy the gauge reports the risk engine's tracked clients as ``risk``."""
    from distillguard import Policy
    from distillguard.risk import RiskPolicy

    guard = guard_factory(
        meter_provider=meter_provider,
        detectors=[StaticDetector(0.3, name="a")],
        policy=Policy(risk=RiskPolicy()),
    )
    app = serve(guard)
    for subject in ("alice", "bob", "carol"):
        assert post(app, token=make_token(sub=subject)) == 200
    assert guard.risk is not None and guard.risk.tracked == 3
    clients = metric_points(metric_reader)[METRIC_CLIENTS]
    assert value_of(clients, distillguard__detector__name="risk") == 3


def test_histogram_queue_is_small_until_a_reader_collects(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Without a metrics SDK at most 4,096 values wait; with one all wait and a collection drains them."""
    from opentelemetry.metrics import NoOpMeterProvider

    from distillguard.telemetry import GuardMetrics

    idle = GuardMetrics(NoOpMeterProvider())
    for _ in range(10_000):
        idle.record_duration(0.00001, "allow")
    assert len(idle._durations) == 4_096

    live = GuardMetrics(meter_provider)
    for _ in range(10_000):
        live.record_duration(0.00001, "allow")
    assert len(live._durations) == 10_000
    (point,) = [p for _, p in metric_points(metric_reader)[METRIC_DURATION]]
    assert point.count == 10_000
    assert len(live._durations) == 0


def test_limiter_errors_are_counted_without_limiter_stats(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Without limiter statistics, ``limiter:`` errors count as fail_open fallbacks by error type."""
    from distillguard import Action, Decision
    from distillguard.telemetry import GuardMetrics

    metrics = GuardMetrics(meter_provider)
    for _ in range(3):
        metrics.record_decision(Decision(action=Action.ALLOW, errors=("limiter:ConnectionError",)))
    metrics.record_decision(Decision(action=Action.ALLOW, errors=("limiter:TimeoutError", "detector:x")))
    fallbacks = metric_points(metric_reader)[METRIC_LIMITER_FALLBACKS]
    assert value_of(fallbacks, distillguard__limiter__outcome="fail_open", error__type="ConnectionError") == 3
    assert value_of(fallbacks, distillguard__limiter__outcome="fail_open", error__type="TimeoutError") == 1


def test_guards_sharing_a_meter_provider_share_the_instruments(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guards on one meter provider share its instruments (no duplicate warning) and sum counts."""
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        first = serve(guard_factory(meter_provider=meter_provider))
        second = serve(guard_factory(meter_provider=meter_provider))
    assert not [r for r in caplog.records if "created already" in r.getMessage()]
    assert [post(first), post(first), post(second)] == [200, 200, 200]
    points = metric_points(metric_reader)
    assert [attrs for attrs, _ in points[METRIC_DECISIONS]] == [{ATTR_DECISION: "allow"}]
    assert value_of(points[METRIC_DECISIONS], distillguard__decision="allow") == 3
    (duration,) = [p for _, p in points[METRIC_DURATION]]
    assert duration.count == 3


@pytest.mark.parametrize("on_internal_error", ["allow", "deny"])
def test_guard_failures_are_counted(
    guard_factory: Callable[..., Guard],
    meter_provider: MeterProvider,
    metric_reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
    on_internal_error: str,
) -> None:
    """A request on which the guard itself fails is counted by error type and by the action
    ``on_internal_error`` took (served without the guard, or refused)."""
    guard = guard_factory(meter_provider=meter_provider, on_internal_error=on_internal_error)
    app = serve(guard)
    assert post(app) == 200
    assert not metric_points(metric_reader).get(METRIC_GUARD_ERRORS)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(guard.plan, "checks_for", broken)
    expected = 200 if on_internal_error == "allow" else 500
    assert [post(app), post(app)] == [expected, expected]
    errors = metric_points(metric_reader)[METRIC_GUARD_ERRORS]
    action = "allow" if on_internal_error == "allow" else "unavailable"
    assert value_of(errors, error__type="RuntimeError", distillguard__decision=action) == 2


def test_answers_too_long_to_watermark_are_counted(
    guard_factory: Callable[..., Guard], meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """An answer the watermark gives up on (longer than it holds) is counted, and passes
    unchanged; a marked answer is not counted."""
    from flask import Flask, Response

    from distillguard._marking import MAX_DOCUMENT
    from distillguard.watermark import Watermark

    text = b"often " * (MAX_DOCUMENT // 6)
    long_answer = b'{"choices":[{"index":0,"message":{"content":"' + text + b'"}}]}'
    app = Flask(__name__)

    @app.post(CHAT_PATH)
    def chat() -> Response:
        return Response(long_answer, mimetype="application/json")

    DistillGuard(guard_factory(meter_provider=meter_provider, watermark=Watermark(b"k" * 32)), app)
    response = app.test_client().post(
        CHAT_PATH, data=chat_body(), headers={"Authorization": f"Bearer {make_token()}"}
    )
    assert response.status_code == 200 and response.data == long_answer
    response.close()  # the exchange ends here
    unmarked = metric_points(metric_reader)[METRIC_WATERMARK_UNMARKED]
    assert value_of(unmarked, distillguard__watermark__reason="too_long") == 1

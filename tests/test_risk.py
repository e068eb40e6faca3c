"""The risk policy: decaying client risk, thresholds to flag/throttle/degrade/block, the
penalty box, shadow mode, calibration, and the verdict on the span."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import Action, ConfigurationError, Guard, Identity, LimitConfig, Policy
from distillguard._drivers import drive
from distillguard.detectors import DetectorResult
from distillguard.exchange import Exchange
from distillguard.request import GuardRequest
from distillguard.risk import RiskEngine, RiskPolicy, calibrate, rescale
from tests.helpers import Dial, decide_anonymous, guard_spans

T0 = 1_800_000_000.0
CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 5}
).encode()


def result(score: float, name: str = "dial") -> DetectorResult:
    """A detector result."""
    return DetectorResult(name, score, ("r",), {"x": score})


def req(
    client: str,
    ts: float,
    path: str = "/v1/chat/completions",
    body: bytes = CHAT,
    identity: Identity | None = None,
) -> GuardRequest:
    """A request from an identity established upstream (``client``, or ``identity``)."""
    return GuardRequest(
        method="POST",
        path=path,
        authorization=None,
        content_type="application/json",
        body=body,
        client_address="10.0.0.1",
        user_agent="pytest",
        timestamp=ts,
        identity=identity or Identity(client_id=client),
    )


def guard_with(factory: Callable[..., Guard], dial: Dial, **risk: Any) -> Guard:
    """A guard with the dial detector and a risk policy."""
    shadow = risk.pop("shadow", False)
    return factory(detectors=[dial], policy=Policy(risk=RiskPolicy(**risk), shadow=shadow))


def test_risk_policy_validates_its_settings() -> None:
    """Out-of-order thresholds, bad half-lives, thresholds and limits fail at construction."""
    for bad in (
        {"flag": 0.8, "throttle": 0.6},
        {"half_life": 0},
        {"thresholds": {"x": 1.0}},
        {"throttle_limits": "lots"},
        {"box_after_refusals": 0},
        {"refusal_window": 0},
        {"max_penalties": 0},
        {"combine": "sum"},
    ):
        with pytest.raises(ConfigurationError):
            RiskPolicy(**bad)


def test_risk_decays_with_the_half_life() -> None:
    """After one half-life without evidence the risk has halved; after two, quartered."""
    engine = RiskEngine(RiskPolicy(half_life=600))
    assert engine.assess("c", [result(0.8)], T0).risk == pytest.approx(0.8)
    assert engine.risk("c", T0 + 600) == pytest.approx(0.4)
    assert engine.assess("c", [result(0.0)], T0 + 1200).risk == pytest.approx(0.2)
    assert engine.risk("unknown", T0) == 0.0


def test_thresholds_map_to_actions() -> None:
    """Risk levels map to allow, flag, flag+throttle, degrade and block (with the box)."""
    cases = [(0.2, Action.ALLOW, False), (0.55, Action.FLAG, False), (0.65, Action.FLAG, True)]
    cases += [(0.8, Action.DEGRADE, True), (0.95, Action.BLOCK, True)]
    for i, (score, action, throttle) in enumerate(cases):
        engine = RiskEngine(RiskPolicy())
        verdict = engine.assess(f"c{i}", [result(score)], T0)
        assert (verdict.action, verdict.throttle) == (action, throttle)
        assert (verdict.boxed_until is not None) == (action is Action.BLOCK)


def test_verdict_names_the_drivers_and_their_signals() -> None:
    """The reasons give the level, the driving detector's reasons and its numeric signals only."""
    verdict = RiskEngine(RiskPolicy()).assess("c", [result(0.95, "a"), result(0.1, "b")], T0)
    assert verdict.reasons[0] == "risk:block"
    assert "a:r" in verdict.reasons and "signal:a.x=0.95" in verdict.reasons
    assert not any(r.startswith("b") or ".b." in r for r in verdict.reasons)


def test_calibrated_thresholds_put_the_benign_percentile_on_flag() -> None:
    """calibrate() takes the percentile of each detector's benign null; rescale() maps that
    threshold to the flag level, so benign maxima stay below it."""
    null = {"a": [0.3 + 0.6 * i / 999 for i in range(1000)], "b": [0.0] * 500, "c": [1.0] * 10}
    thresholds = calibrate(null, 99.0)
    assert thresholds["a"] == pytest.approx(0.3 + 0.6 * 989.01 / 999, abs=1e-9)  # linear interpolation
    assert thresholds["b"] == 0.5 and thresholds["c"] == 0.95  # clamped to [floor, ceiling]
    assert calibrate(null, 99.0, floor=0.1)["b"] == 0.1
    assert rescale(thresholds["a"], thresholds["a"], 0.5) == pytest.approx(0.5)
    assert rescale(1.0, 0.3, 0.5) == 1.0 and rescale(0.0, 0.3, 0.5) == 0.0
    engine = RiskEngine(RiskPolicy(thresholds={"a": 0.9}))
    assert engine.assess("c", [result(0.85, "a")], T0).action is Action.ALLOW
    with pytest.raises(ConfigurationError):
        calibrate(null, 100.0)
    with pytest.raises(ConfigurationError):
        calibrate({"a": []}, 99.0)
    with pytest.raises(ConfigurationError):
        calibrate(null, 99.0, floor=0.0)


def test_noisy_or_adds_up_moderate_signals() -> None:
    """With combine="noisy_or" two moderate detectors together reach the flag level."""
    two = [result(0.3, "a"), result(0.35, "b")]
    assert RiskEngine(RiskPolicy()).assess("c", two, T0).action is Action.ALLOW
    assert RiskEngine(RiskPolicy(combine="noisy_or")).assess("c", two, T0).action is Action.FLAG


def test_block_boxes_the_client_across_routes(guard_factory: Callable[..., Guard]) -> None:
    """Once blocked, the client is refused on every route for the penalty time, before any
    detector runs, even when the detectors calm down; then it is let back in."""
    dial = Dial()
    guard = guard_with(guard_factory, dial, penalty_seconds=600)
    perform = guard.sync_performer()
    dial.value = 1.0
    first = drive(guard.flow(req("thief", T0)), perform)
    assert first.action is Action.BLOCK and first.problem is not None
    assert first.problem.code == "suspicious_usage"
    dial.value = 0.0
    calls = dial.calls
    later = drive(guard.flow(req("thief", T0 + 300, path="/v1/embeddings")), perform)
    assert later.action is Action.BLOCK and later.reasons == ("risk:penalty_box",)
    assert dial.calls == calls  # refused before the detectors
    assert drive(guard.flow(req("other", T0 + 300)), perform).action is Action.ALLOW
    released = drive(guard.flow(req("thief", T0 + 601)), perform)
    assert released.problem is None


def test_penalty_box_survives_a_flood_of_new_identities() -> None:
    """100,000 new identities churn the bounded risk table but never free a boxed client."""
    engine = RiskEngine(RiskPolicy(max_clients=1000, max_penalties=10, penalty_seconds=3600))
    assert engine.assess("thief", [result(1.0)], T0).action is Action.BLOCK
    for i in range(100_000):
        engine.assess(f"sybil-{i}", [result(0.0)], T0 + 1)
    assert engine.tracked == 1000 and engine.evictions == 100_000 + 1 - 1000
    assert engine.boxed_until("thief", T0 + 10) == T0 + 3600


def test_full_penalty_box_drops_the_earliest_release() -> None:
    """When the box is full, the entry closest to release goes first (counted)."""
    engine = RiskEngine(RiskPolicy(max_penalties=2, penalty_seconds=100))
    for i, name in enumerate(("a", "b", "c")):
        engine.box(name, T0 + i)
    assert engine.boxed_until("a", T0 + 5) is None
    assert engine.boxed_until("c", T0 + 5) is not None and engine.box_evictions == 1


def test_throttle_charges_a_tighter_window(guard_factory: Callable[..., Guard]) -> None:
    """A client at the throttle level is charged an extra "2/minute" window: its third request
    in a minute is refused with rate_limited (action throttle); others are not affected."""
    dial = Dial()
    guard = guard_with(guard_factory, dial, throttle_limits="2/minute")
    perform = guard.sync_performer()
    dial.value = 0.65
    now = time.time()
    actions = [drive(guard.flow(req("pushy", now + i)), perform) for i in range(3)]
    assert [d.action for d in actions] == [Action.FLAG, Action.FLAG, Action.THROTTLE]
    assert actions[2].problem is not None and actions[2].problem.code == "rate_limited"
    assert any(r.startswith("throttle:") for r in actions[2].reasons)
    # the client is not told the throttle's pace: the refusal names the usage pattern only
    assert actions[2].problem.extensions["violated-policies"] == ["usage-pattern"]
    dial.value = 0.0
    assert drive(guard.flow(req("calm", now + 3)), perform).action is Action.ALLOW


def test_degrade_strips_logprobs(guard_factory: Callable[..., Guard]) -> None:
    """At the degrade level the app receives the body without logprobs/top_logprobs."""
    dial = Dial()
    guard = guard_with(guard_factory, dial)
    dial.value = 0.8
    decision = drive(guard.flow(req("d", time.time())), guard.sync_performer())
    assert decision.action is Action.DEGRADE and decision.body is not None
    body = json.loads(decision.body)
    assert "logprobs" not in body and "top_logprobs" not in body and body["messages"]


def test_shadow_mode_records_but_never_refuses(guard_factory: Callable[..., Guard]) -> None:
    """In shadow mode a block is recorded (the box too) but every request goes through."""
    dial = Dial()
    guard = guard_with(guard_factory, dial, shadow=True)
    perform = guard.sync_performer()
    dial.value = 1.0
    first = drive(guard.flow(req("s", T0)), perform)
    assert (first.action, first.shadow, first.problem) == (Action.BLOCK, True, None)
    assert guard.risk is not None and guard.risk.boxed_until("s", T0 + 1) is not None
    dial.value = 0.0
    second = drive(guard.flow(req("s", T0 + 1)), perform)
    assert second.problem is None


def test_verdict_is_recorded_on_the_span(
    guard_factory: Callable[..., Guard], span_exporter: InMemorySpanExporter
) -> None:
    """The guard span carries the risk as the score and the level, drivers and signals as
    reasons."""
    dial = Dial()
    guard = guard_with(guard_factory, dial)
    dial.value = 0.8
    request = req("spanned", time.time())
    exchange = Exchange(guard, request)
    exchange.decided(guard.decide(request, guard.sync_performer()))
    exchange.finish()
    (span,) = guard_spans(span_exporter)
    attrs = dict(span.attributes or {})
    assert attrs["distillguard.decision"] == "degrade"
    assert attrs["distillguard.score"] == pytest.approx(0.8)
    reasons = list(attrs["distillguard.reasons"])  # type: ignore[arg-type]
    assert "risk:degrade" in reasons and "dial:turned_up" in reasons and "signal:dial.level=0.8" in reasons


def test_guard_without_risk_policy_keeps_per_request_thresholds(guard_factory: Callable[..., Guard]) -> None:
    """Without Policy(risk=...) the guard has no risk engine and decides per request."""
    dial = Dial()
    guard = guard_factory(detectors=[dial], limits=LimitConfig(default="1000/minute"))
    assert guard.risk is None
    dial.value = 0.95
    assert drive(guard.flow(req("x", time.time())), guard.sync_performer()).action is Action.BLOCK
    dial.value = 0.0
    assert drive(guard.flow(req("x", time.time())), guard.sync_performer()).action is Action.ALLOW


def test_the_penalty_box_does_not_hold_a_shadow_tier(guard_factory: Callable[..., Guard]) -> None:
    """A client of a tier in shadow detection reaches a block risk, which is recorded on every
    request, but it is never refused, by the verdict or by the penalty box."""
    dial = Dial()
    guard = guard_factory(
        detectors=[dial],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600), tier_detection={"partner": "shadow"}),
    )
    perform = guard.sync_performer()
    dial.value = 1.0
    partner = Identity(client_id="partner-app", tier="partner")
    first = drive(guard.flow(req("partner-app", T0, identity=partner)), perform)
    assert (first.action, first.shadow, first.problem) == (Action.BLOCK, True, None)
    dial.value = 0.0
    later = drive(guard.flow(req("partner-app", T0 + 60, identity=partner)), perform)
    assert later.problem is None and later.reasons != ("risk:penalty_box",)


def test_several_issuers_box_and_score_the_same_sub_apart() -> None:
    """With several issuers, ``alice`` of one and ``alice`` of another are two clients for the
    detectors, the risk and the penalty box too (not only for the limits): one is blocked, the
    other is served. The app still sees ``alice``."""
    from distillguard import DistillGuardWSGIMiddleware
    from tests.helpers import EchoWSGIApp, jwt_config, make_token
    from tests.limiting.apps import wsgi_call

    a, b = "https://a.example", "https://b.example"
    dial = Dial()
    seen: list[str] = []

    class Witness:
        name = "witness"

        def score(self, observation: Any) -> DetectorResult:
            seen.append(observation.identity.client_id)
            return DetectorResult(self.name, 0.0)

    guard = Guard(
        jwt=jwt_config(issuer=[a, b]),
        detectors=[dial, Witness()],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
    )
    app = EchoWSGIApp()
    mw = DistillGuardWSGIMiddleware(app, guard=guard)

    def status(issuer: str) -> int:
        return wsgi_call(mw, CHAT, token=make_token(sub="alice", iss=issuer))[0]

    dial.value = 1.0
    assert status(a) == 429  # blocked, and boxed
    dial.value = 0.0
    assert status(a) == 429  # the box holds alice of a
    assert status(b) == 200  # not alice of b
    assert len(set(seen)) == 2 and all(s.endswith("alice") for s in seen)
    assert app.calls[-1].identity.client_id == "alice"


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_neither_lengthens_nor_shortens_a_penalty(
    monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    """With the guard's default clock, the penalty box and the risk's decay run in real
    seconds: after the wall clock steps an hour back (or forward), a boxed client is still
    refused with a Retry-After within its 1-second penalty, and is served once the penalty has
    really passed; its risk has not decayed by an hour either."""
    wall = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: wall() + offset[0])
    dial = Dial()
    dial.value = 1.0
    guard = Guard(
        jwt=None,
        detectors=[dial],
        policy=Policy(risk=RiskPolicy(penalty_seconds=1.0, half_life=3600.0, block=0.9)),
    )

    def call() -> tuple[str, int | None]:
        return decide_anonymous(guard, "198.51.100.7", b'{"model": "m", "prompt": "x"}')

    start = time.monotonic()
    assert call()[0] == "block"
    dial.value = 0.0
    offset[0] = step
    assert abs(time.time() - guard.clock() - step) < 1.0  # the wall clock stepped, the guard's did not
    action, retry = call()
    assert action == "block" and retry is not None and 1 <= retry <= 2
    time.sleep(max(0.0, 1.1 - (time.monotonic() - start)))
    action, _ = call()  # out of the box; the risk (half-life an hour) still blocks it again
    assert action == "block"
    assert guard.risk is not None and guard.risk.risk("ip:198.51.100.7", guard.clock()) > 0.9


@pytest.mark.parametrize("policy", ["enforce", "shadow", "off"])
def test_a_client_hammering_past_its_limits_is_boxed(
    guard_factory: Callable[..., Guard], policy: str
) -> None:
    """With ``box_after_refusals=3``, the third refusal by the client's limits within the
    window puts it in the penalty box: its next requests get ``suspicious_usage`` whatever its
    windows say, on every route, while another client is unaffected. Shadow mode and an
    ``off`` tier count nothing; without the setting nobody is boxed for refusals."""
    dial = Dial()
    risk = RiskPolicy(box_after_refusals=3, refusal_window=60.0, penalty_seconds=600.0)
    guard = guard_factory(
        detectors=[dial],
        limits=LimitConfig(default="2/minute"),
        policy=Policy(
            risk=risk, shadow=policy == "shadow", tier_detection={"default": "off"} if policy == "off" else {}
        ),
    )
    perform = guard.sync_performer()
    now = time.time()
    decisions = [drive(guard.flow(req("hammer", now + i * 0.1)), perform) for i in range(7)]
    actions = [d.action for d in decisions]
    if policy == "enforce":
        assert actions[:5] == [Action.ALLOW, Action.ALLOW] + [Action.RATE_LIMITED] * 3
        assert decisions[4].reasons == ("risk:penalty_box", "risk:refusals")
        assert actions[5:] == [Action.BLOCK, Action.BLOCK]
        assert decisions[5].problem is not None and decisions[5].problem.code == "suspicious_usage"
        other = drive(guard.flow(req("hammer", now + 1, path="/v1/embeddings")), perform)
        assert other.action is Action.BLOCK  # the box holds across routes
    else:
        assert Action.BLOCK not in actions
    assert drive(guard.flow(req("calm", now + 1)), perform).action is Action.ALLOW
    never = guard_factory(
        detectors=[dial], limits=LimitConfig(default="2/minute"), policy=Policy(risk=RiskPolicy())
    )
    actions = [
        drive(never.flow(req("hammer", now + i * 0.1)), never.sync_performer()).action for i in range(10)
    ]
    assert Action.BLOCK not in actions


def test_a_release_once_seen_stays_seen_when_the_risk_table_evicts_the_client() -> None:
    """A replica applies each shared release once. Evicting the client's risk entry (a table of
    ``max_clients``) does not make the same release look new, which would wipe the history the
    client built since; a new release (a higher count) is seen, and so is the count after the
    process forgot the client itself."""
    risk = RiskEngine(RiskPolicy(max_clients=2), shared=True)
    assert risk.released("thief", 1, 1_000.0) is True
    assert risk.released("thief", 1, 1_000.0) is False
    for other in ("a", "b"):
        risk.assess(other, [DetectorResult("d", 0.1)], 10.0)
    assert risk.token("thief") is None and risk.evictions == 1  # its risk entry is gone
    assert risk.released("thief", 1, 1_000.0) is False
    assert risk.released("thief", 2, 1_000.0) is True
    risk.forget("thief")  # a release made by this process
    assert risk.released("thief", 2, 1_000.0) is True

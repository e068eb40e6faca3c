"""The sans-IO pipeline (``flow.evaluate``) driven without HTTP: with the real performers
(``limits`` on ``memory://``) and with performers that fail on purpose."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from distillguard import Action, ConfigurationError, Guard, Identity, LimitConfig, Policy
from distillguard._drivers import adrive, drive
from distillguard.detectors import DetectorResult, Observation
from distillguard.flow import RunDetector, degrade_body
from distillguard.query import parse_query
from distillguard.request import GuardRequest, bearer_token
from tests.helpers import RaisingDetector, StaticDetector, b64url, make_token

pytestmark = pytest.mark.timeout(30)

CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hello"}], "logprobs": True}
).encode()


def request(token: str | None = None, *, body: bytes = CHAT, **overrides: Any) -> GuardRequest:
    """A request to the chat endpoint."""
    options: dict[str, Any] = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "authorization": f"Bearer {token}" if token is not None else None,
        "content_type": "application/json",
        "body": body,
        "client_address": "10.0.0.1",
        "user_agent": "pytest",
        "timestamp": time.time(),
    }
    options.update(overrides)
    return GuardRequest(**options)


class Recording:
    """Wraps a performer; records the type of every effect it performs."""

    def __init__(self, inner: Callable[[Any], object]) -> None:
        self.inner = inner
        self.effects: list[str] = []

    def __call__(self, effect: Any) -> object:
        self.effects.append(type(effect).__name__)
        return self.inner(effect)


def refuse_effects(effect: Any) -> object:
    raise AssertionError(f"no effect expected, got {effect!r}")


def test_missing_token_performs_nothing(guard_factory: Callable[..., Guard]) -> None:
    """Without a token the pipeline refuses before charging any limit or running a detector."""
    guard = guard_factory(detectors=[StaticDetector()])
    decision = drive(guard.flow(request()), refuse_effects)
    assert decision.action is Action.UNAUTHENTICATED
    assert decision.problem is not None and decision.problem.code == "missing_token"
    assert decision.auth_failure == "missing"


def test_forged_token_charges_nothing(guard_factory: Callable[..., Guard]) -> None:
    """A forged token is refused before limits: forged tokens carrying a victim's ``sub``
    cannot use up the victim's quota."""
    guard = guard_factory(limits=LimitConfig(default="1/minute"))
    forged = make_token(key=b"attacker-secret-attacker-secret-0123456789")
    for _ in range(3):
        decision = drive(guard.flow(request(forged)), refuse_effects)
        assert decision.action is Action.UNAUTHENTICATED
        assert decision.problem is not None and decision.problem.code == "invalid_token"
    perform = guard.sync_performer()
    assert drive(guard.flow(request(make_token())), perform).action is Action.ALLOW


def test_order_limits_then_detectors(guard_factory: Callable[..., Guard]) -> None:
    """An admitted request charges its limits first, then runs each detector once."""
    guard = guard_factory(
        limits=LimitConfig(default="5/minute;100/day"), detectors=[StaticDetector(), StaticDetector(name="b")]
    )
    perform = Recording(guard.sync_performer())
    decision = drive(guard.flow(request(make_token())), perform)
    assert decision.action is Action.ALLOW
    assert perform.effects[-2:] == ["RunDetector", "RunDetector"]
    assert "RunDetector" not in perform.effects[:-2] and len(perform.effects) > 2
    assert [o.check.policy for o in decision.limits] == ["5-per-1-minute", "100-per-1-day"]
    assert decision.limits[0].remaining == 4


def test_rate_limited_skips_detectors(guard_factory: Callable[..., Guard]) -> None:
    """A request over its limit is refused without running detectors."""
    detector = StaticDetector()
    guard = guard_factory(limits=LimitConfig(default="1/minute"), detectors=[detector])
    perform = guard.sync_performer()
    token = make_token()
    assert drive(guard.flow(request(token)), perform).action is Action.ALLOW
    decision = drive(guard.flow(request(token)), perform)
    assert decision.action is Action.RATE_LIMITED
    assert decision.problem is not None and decision.problem.status == 429
    assert len(detector.calls) == 1


def test_detector_failure_is_recorded(guard_factory: Callable[..., Guard]) -> None:
    """A detector whose effect comes back as an exception scores 0 and is named in ``errors``;
    with ``on_error="block"`` it scores 1 and blocks."""
    for policy, action in ((Policy(), Action.ALLOW), (Policy(on_error="block"), Action.BLOCK)):
        guard = guard_factory(detectors=[RaisingDetector()], policy=policy)
        decision = drive(guard.flow(request(make_token())), guard.sync_performer())
        assert decision.action is action
        assert "detector:broken" in decision.errors
        assert decision.results[0].reasons == ("error",)


def test_detector_sees_the_observation(guard_factory: Callable[..., Guard]) -> None:
    """Detectors get the verified identity, the parsed query and the request metadata."""
    detector = StaticDetector()
    guard = guard_factory(detectors=[detector])
    drive(guard.flow(request(make_token(sub="obs", tier="pro"))), guard.sync_performer())
    (observation,) = detector.calls
    assert isinstance(observation, Observation)
    assert observation.client_id == "obs" and observation.identity.tier == "pro"
    assert observation.query.kind == "chat" and observation.query.text == "hello"
    assert observation.route == "/v1/chat/completions" and observation.method == "POST"
    assert observation.client_address == "10.0.0.1" and observation.user_agent == "pytest"


def test_identity_from_upstream_skips_tokens(guard_factory: Callable[..., Guard]) -> None:
    """An identity established upstream is used as is; no token is needed."""
    guard = guard_factory()
    upstream = Identity(client_id="gateway-user", tier="pro")
    decision = drive(guard.flow(request(identity=upstream)), guard.sync_performer())
    assert decision.action is Action.ALLOW and decision.identity == upstream


def test_without_jwt_clients_are_anonymous_by_address(guard_factory: Callable[..., Guard]) -> None:
    """With ``jwt=None`` clients are identified by address, as anonymous."""
    guard = guard_factory(jwt=None)
    decision = drive(guard.flow(request()), guard.sync_performer())
    assert decision.identity is not None
    assert decision.identity.client_id == "ip:10.0.0.1" and decision.identity.anonymous


def test_shadow_never_refuses(guard_factory: Callable[..., Guard]) -> None:
    """In shadow mode a block verdict and an exhausted limit both let the request through."""
    guard = guard_factory(
        limits=LimitConfig(default="1/minute"), detectors=[StaticDetector(1.0)], policy=Policy(shadow=True)
    )
    perform = guard.sync_performer()
    token = make_token()
    first, second = (drive(guard.flow(request(token)), perform) for _ in range(2))
    assert (first.action, first.shadow, first.problem) == (Action.BLOCK, True, None)
    assert (second.action, second.shadow, second.problem) == (Action.RATE_LIMITED, True, None)
    assert first.body is None


def test_sync_and_async_drivers_agree(guard_factory: Callable[..., Guard]) -> None:
    """The same requests give the same actions through ``drive`` and ``adrive``."""
    tokens = [make_token(), make_token(), make_token(), "bad", None]

    def actions_sync() -> list[Action]:
        guard = guard_factory(limits=LimitConfig(default="2/minute"), detectors=[StaticDetector(0.6)])
        perform = guard.sync_performer()
        return [drive(guard.flow(request(t)), perform).action for t in tokens]

    async def actions_async() -> list[Action]:
        guard = guard_factory(limits=LimitConfig(default="2/minute"), detectors=[StaticDetector(0.6)])
        perform = guard.async_performer()
        return [(await adrive(guard.flow(request(t)), perform)).action for t in tokens]

    expected = [Action.FLAG, Action.FLAG, Action.RATE_LIMITED, Action.UNAUTHENTICATED, Action.UNAUTHENTICATED]
    assert actions_sync() == expected
    assert anyio.run(actions_async) == expected


def test_internal_error_follows_policy(guard_factory: Callable[..., Guard]) -> None:
    """When the pipeline itself fails, ``on_internal_error`` decides: allow (recorded) or a
    500 ``guard_error``."""

    def broken(effect: Any) -> object:
        raise ZeroDivisionError

    allowed = guard_factory().decide(request(make_token()), broken)
    assert allowed.action is Action.ALLOW and allowed.errors == ("guard:ZeroDivisionError",)
    denied = guard_factory(on_internal_error="deny").decide(request(make_token()), broken)
    assert denied.problem is not None and denied.problem.status == 500
    assert denied.problem.code == "guard_error"


def test_internal_errors_are_logged_without_their_message_and_without_flooding(
    guard_factory: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    """The first internal error at a place is logged with its stack but not its message (it
    may quote the request); repeats only as counts at 10, 100, 1,000..."""

    quoted = "".join(("SEC", "RET PROMPT TEXT"))  # what a message may carry at run time

    def broken(effect: Any) -> object:
        raise ValueError(quoted)

    guard = guard_factory()
    with caplog.at_level("ERROR", logger="distillguard"):
        for _ in range(100):
            guard.decide(request(make_token()), broken)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # the first, the 10th, the 100th
    assert "ValueError at" in messages[0] and "test_flow.py" in messages[0]
    assert messages[1].endswith("10 times so far") and messages[2].endswith("100 times so far")
    assert "SECRET" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_effects_are_values(guard_factory: Callable[..., Guard]) -> None:
    """The pipeline asks for work with effect values the driver can inspect."""
    guard = guard_factory(limits=LimitConfig(default=""), detectors=[StaticDetector()])
    flow = guard.flow(request(make_token()))
    effect = next(flow)
    assert isinstance(effect, RunDetector) and effect.detector.name == "static"
    with pytest.raises(StopIteration) as done:
        flow.send(effect.detector.score(effect.observation))
    assert done.value.value.action is Action.ALLOW


# -- degrade ---------------------------------------------------------------------------------


def test_degrade_body_removes_fields_and_caps() -> None:
    """``degrade_body`` drops the policy's fields and caps ``max_tokens``; unchanged bodies and
    non-JSON bodies give ``None``."""
    body = json.dumps({"prompt": "p", "logprobs": 5, "logit_bias": {"1": 2}, "max_tokens": 500}).encode()
    out = degrade_body(parse_query(body), Policy(degrade_max_tokens=100))
    assert out is not None
    assert json.loads(out) == {"prompt": "p", "max_tokens": 100}
    plain = json.dumps({"prompt": "p", "max_tokens": 10}).encode()
    assert degrade_body(parse_query(plain), Policy(degrade_max_tokens=100)) is None
    assert degrade_body(parse_query(b"not json", "text/plain"), Policy()) is None


def test_degrade_keeps_unicode() -> None:
    """Degrading keeps non-ASCII prompt text intact (UTF-8, not escaped into something else)."""
    body = json.dumps({"messages": [{"role": "user", "content": "héllo ☃"}], "top_logprobs": 3}).encode()
    out = degrade_body(parse_query(body), Policy())
    assert out is not None and json.loads(out)["messages"][0]["content"] == "héllo ☃"


# -- request helpers and guard configuration -------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Bearer", ""),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    """Only the Bearer scheme yields a token (case-insensitive); an empty one is ``""``."""
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_body_bytes": 0}, id="zero-body-cap"),
        pytest.param({"on_internal_error": "explode"}, id="bad-internal-error-policy"),
        pytest.param({"jwt": {"algorithms": ["HS256"]}}, id="jwt-not-a-config"),
        pytest.param({"exempt_paths": "/health"}, id="exempt-paths-as-a-string"),
        pytest.param({"exempt_paths": ["health"]}, id="exempt-path-without-slash"),
    ],
)
def test_guard_config_fails_fast(guard_factory: Callable[..., Guard], options: dict[str, Any]) -> None:
    """Invalid guard settings raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        guard_factory(**options)


def test_exempt_paths(guard_factory: Callable[..., Guard]) -> None:
    """Exempt paths match exactly, or by prefix when they end with ``/``."""
    guard = guard_factory(exempt_paths=("/health", "/static/"))
    assert guard.is_exempt("/health") and guard.is_exempt("/static/app.js")
    assert not guard.is_exempt("/healthz") and not guard.is_exempt("/static")
    assert not guard.is_exempt("/v1/chat/completions")


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        pytest.param({}, {"max_tokens": 100}, id="none-sent-adds-max-tokens"),
        pytest.param({"max_tokens": 500}, {"max_tokens": 100}, id="max-tokens-capped"),
        pytest.param({"max_tokens": 50}, {"max_tokens": 50}, id="max-tokens-under-cap"),
        pytest.param(
            {"max_completion_tokens": 500}, {"max_completion_tokens": 100}, id="completion-tokens-only"
        ),
        pytest.param(
            {"max_tokens": 500, "max_completion_tokens": 900},
            {"max_tokens": 100, "max_completion_tokens": 100},
            id="both-capped",
        ),
        pytest.param({"max_tokens": None}, {"max_tokens": 100}, id="null-replaced"),
    ],
)
def test_degrade_caps_only_sent_token_fields(sent: dict[str, Any], seen: dict[str, Any]) -> None:
    """The cap rewrites the token-limit field(s) the client sent and never adds a second one
    (``max_completion_tokens`` clients must not get ``max_tokens``, nor a ``null``)."""
    body = json.dumps({"messages": [], "logprobs": True, **sent}).encode()
    out = degrade_body(parse_query(body), Policy(degrade_max_tokens=100))
    assert out is not None
    assert json.loads(out) == {"messages": [], **seen}


def test_authentication_fails_closed_on_errors(
    guard_factory: Callable[..., Guard], caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error while verifying a token gives 401, not the guard's fail-open
    ``allow`` for internal errors: nothing reaches the app unauthenticated. The bug is logged
    once per error type, with where it was raised, never the token or the error's message."""
    from distillguard import JWTConfig
    from distillguard.identity import jwt as jwt_module
    from tests.helpers import AUDIENCE, ISSUER

    class ResolverBugError(RuntimeError):
        pass

    class Broken:
        def key_for(self, kid: str | None, alg: str) -> Any:
            raise ResolverBugError(f"resolver bug quoting the kid {kid}")

    jwt = JWTConfig(algorithms=["HS256"], key_resolver=Broken(), issuer=ISSUER, audience=AUDIENCE)
    guard = guard_factory(jwt=jwt)
    jwt_module._reported.discard("ResolverBugError")
    tokens = [make_token(sub=f"user-{i}", headers={"kid": f"secret-kid-{i}"}) for i in range(3)]
    with caplog.at_level("ERROR", logger="distillguard"):
        for token in tokens:
            decision = guard.decide(request(token), guard.sync_performer())
            assert decision.action is Action.UNAUTHENTICATED
            assert decision.problem is not None and decision.problem.code == "invalid_token"
    (record,) = [r for r in caplog.records if "token verification raised" in r.getMessage()]
    text = record.getMessage()
    assert "ResolverBugError" in text and "key_for" in text
    assert "secret-kid" not in text and not any(t in text or t.split(".")[1] in text for t in tokens)


def test_degrade_survives_lone_surrogates() -> None:
    """A prompt holding a JSON-escaped lone surrogate (valid JSON) is still degraded: the
    rewritten body keeps it escaped instead of failing to encode."""
    body = b'{"messages":[{"role":"user","content":"x\\ud800y"}],"logprobs":true,"top_logprobs":5}'
    out = degrade_body(parse_query(body), Policy())
    assert out is not None
    assert json.loads(out) == {"messages": [{"role": "user", "content": "x\ud800y"}]}


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
_json_value = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
_body_keys = st.sampled_from(
    ["messages", "prompt", "input", "model", "max_tokens", "max_completion_tokens", "n", "logprobs",
     "top_logprobs", "logit_bias", "stream", "temperature", "inputs", "instances", "features"]
)  # fmt: skip


_GUARDS: dict[Any, Any] = {}
_TOKEN = make_token(exp=int(time.time()) + 3600)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(_body_keys, _json_value, max_size=8), score=st.sampled_from([0.0, 0.6, 0.8, 1.0]))
def test_no_request_body_breaks_the_pipeline(
    guard_factory: Callable[..., Guard], doc: dict[str, Any], score: float
) -> None:
    """No request body, however odd its field types and values, makes the pipeline fail (a
    failure would fall back to the internal-error path and skip limits and detectors)."""
    from distillguard.limiting.rules import LimitRule

    key = (id(guard_factory), score)
    if key not in _GUARDS:
        guard = guard_factory(
            limits=LimitConfig(
                default="100000/minute",
                rules=[LimitRule(name="tok", limits="1000000000/minute", unit="tokens", models=["m", "gpt"])],
            ),
            detectors=[StaticDetector(score)],
            policy=Policy(degrade_max_tokens=64),
        )
        if len(_GUARDS) > 8:
            _GUARDS.clear()
        _GUARDS[key] = (guard, guard.sync_performer())
    guard, perform = _GUARDS[key]
    body = json.dumps(doc, allow_nan=True).encode()
    decision = drive(guard.flow(request(_TOKEN, body=body)), perform)
    assert not any(e.startswith("guard:") for e in decision.errors)
    assert decision.identity is not None and decision.identity.client_id == "client-1"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(
        st.text(max_size=200),
        st.text(
            alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=", max_size=300
        ).map(lambda t: "Bearer " + t),
        st.lists(st.binary(max_size=60), min_size=3, max_size=3).map(
            lambda parts: "Bearer " + ".".join(b64url(p) for p in parts)
        ),
    )
)
def test_no_authorization_header_gets_through(
    guard_factory: Callable[..., Guard], authorization: str
) -> None:
    """Any ``Authorization`` value that is not a valid token is refused with 401, or 400 when
    it is malformed (never an internal error, which would fail open)."""
    key = ("auth", id(guard_factory))
    if key not in _GUARDS:
        guard = guard_factory()
        _GUARDS[key] = (guard, guard.sync_performer())
    guard, perform = _GUARDS[key]
    decision = drive(guard.flow(request(authorization=authorization)), perform)
    assert decision.action is Action.UNAUTHENTICATED
    assert decision.problem is not None and decision.problem.status in (400, 401)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.text(max_size=80).map(lambda p: "/" + p),
    content_type=st.text(max_size=40),
    user_agent=st.none() | st.text(max_size=40),
    address=st.none() | st.text(max_size=40),
    body=st.binary(max_size=200),
)
def test_no_request_metadata_breaks_the_pipeline(
    guard_factory: Callable[..., Guard],
    path: str,
    content_type: str,
    user_agent: str | None,
    address: str | None,
    body: bytes,
) -> None:
    """Odd paths, content types, user agents, addresses and bodies never make the pipeline
    fail, with or without a token."""
    from distillguard.limiting.rules import LimitRule

    key = ("meta", id(guard_factory))
    if key not in _GUARDS:
        guard = guard_factory(
            limits=LimitConfig(
                default="100000/minute",
                rules=[LimitRule(name="v1", limits="100000/minute", routes=["/v1/"])],
            ),
            detectors=[StaticDetector(0.8)],
        )
        _GUARDS[key] = (guard, guard.sync_performer())
    guard, perform = _GUARDS[key]
    for token in (_TOKEN, None):
        decision = drive(
            guard.flow(
                request(
                    token,
                    body=body,
                    path=path,
                    content_type=content_type,
                    user_agent=user_agent,
                    client_address=address,
                )
            ),
            perform,
        )
        assert not any(e.startswith("guard:") for e in decision.errors)
        assert decision.action is (Action.DEGRADE if token else Action.UNAUTHENTICATED)


def test_a_shadow_tier_is_scored_never_refused_but_still_limited(guard_factory: Callable[..., Guard]) -> None:
    """A tier in shadow detection gets the block verdict recorded but served, and is still
    refused by its limits; other tiers are blocked."""
    detector = StaticDetector(1.0)
    guard = guard_factory(
        limits=LimitConfig(default="1/minute"),
        detectors=[detector],
        policy=Policy(tier_detection={"integration": "shadow"}),
    )
    perform = guard.sync_performer()
    trusted = make_token(sub="backend", tier="integration")
    first, second = (drive(guard.flow(request(trusted)), perform) for _ in range(2))
    assert (first.action, first.shadow, first.problem, first.body) == (Action.BLOCK, True, None, None)
    assert first.results and first.results[0].score == 1.0
    assert second.action is Action.RATE_LIMITED and second.problem is not None and not second.shadow
    other = drive(guard.flow(request(make_token(sub="someone", tier="free"))), perform)
    assert other.action is Action.BLOCK and other.problem is not None


def test_a_tier_with_detection_off_runs_no_detector(guard_factory: Callable[..., Guard]) -> None:
    """Detection ``"off"``: no detector runs (a raising one with ``on_error="block"`` would
    block), the request is allowed and its limits still apply."""
    broken = RaisingDetector()
    guard = guard_factory(
        limits=LimitConfig(default="1/minute"),
        detectors=[broken],
        policy=Policy(on_error="block", tier_detection={"internal": "off"}),
    )
    perform = Recording(guard.sync_performer())
    token = make_token(sub="batch-job", tier="internal")
    first = drive(guard.flow(request(token)), perform)
    assert (first.action, first.results, broken.calls) == (Action.ALLOW, (), 0)
    assert "RunDetector" not in perform.effects
    assert drive(guard.flow(request(token)), perform).action is Action.RATE_LIMITED
    assert drive(guard.flow(request(make_token(sub="x", tier="free"))), perform).action is Action.BLOCK


def test_tier_detection_is_checked() -> None:
    """Unknown modes and non-string tiers fail at construction."""
    for bad in ({"pro": "ignore"}, {1: "off"}, [("pro", "off")]):
        with pytest.raises(ConfigurationError):
            Policy(tier_detection=bad)  # type: ignore[arg-type]


def test_tier_detection_is_a_read_only_copy() -> None:
    """Changing the caller's dict afterwards changes nothing; a policy stays hashable."""
    modes = {"partner": "shadow"}
    policy = Policy(tier_detection=modes)  # type: ignore[arg-type]
    modes["partner"] = "off"
    assert policy.tier_detection == {"partner": "shadow"}
    with pytest.raises(TypeError):
        policy.tier_detection["partner"] = "off"  # type: ignore[index]
    assert hash(policy) == hash(Policy())


def test_shared_penalty_box_effects() -> None:
    """With a shared limit storage the flow reads the client's box window first, in the same
    batch as its windows (cost 0, not disclosed); a box window over its limit refuses the
    request before the detectors (``Retry-After`` from the window's reset), and a block fills
    the window past its limit (:class:`ChargeLimit`). The effects are answered by hand: no
    storage is touched."""
    from distillguard.limiting import LimitOutcome
    from distillguard.limiting.effects import ChargeLimit, HitLimits
    from distillguard.risk import RiskPolicy

    detector = StaticDetector(1.0)
    guard = Guard(
        jwt=None,
        limits=LimitConfig(default="5/minute", storage_uri="redis://127.0.0.1:1/0"),
        detectors=[detector],
        policy=Policy(risk=RiskPolicy(penalty_seconds=120)),
    )
    now = time.time()

    def batch(effect: HitLimits, boxed: bool, level: int = 0, releases: int = 0) -> tuple[LimitOutcome, ...]:
        return tuple(
            LimitOutcome(
                check=c,
                allowed=not (boxed and i == 0),
                remaining=c.item.amount - level
                if c.key[0] == "level"
                else c.item.amount - releases
                if c.key[0] == "release"
                else 1,
                reset_at=now + 100,
                charged=False,
            )
            for i, c in enumerate(effect.checks)
        )

    flow = guard.flow(request(identity=Identity(client_id="thief"), timestamp=now))
    effect = next(flow)
    assert isinstance(effect, HitLimits)
    box, level, release = effect.checks[:3]
    assert box.key == ("box", "thief") and box.cost == 0 and not box.headers
    assert level.key == ("level", "thief") and level.cost == 0 and not level.headers
    assert release.key == ("release", "thief") and release.cost == 0 and not release.headers
    assert box.item.get_expiry() == 120 and len(effect.checks) == 4
    effect = flow.send(batch(effect, boxed=False))
    assert isinstance(effect, RunDetector)
    effect = flow.send(detector.score(effect.observation))
    assert isinstance(effect, ChargeLimit) and effect.check == level and effect.amount == 3  # degrade+
    effect = flow.send(None)
    assert isinstance(effect, HitLimits) and effect.checks[0].key == ("risk", "thief")  # throttle
    effect = flow.send(batch(effect, boxed=False))
    assert isinstance(effect, ChargeLimit) and effect.check == box and effect.amount == 2
    with pytest.raises(StopIteration) as stop:
        flow.send(None)
    blocked = stop.value.value
    assert blocked.action is Action.BLOCK and all(o.check not in (box, level) for o in blocked.limits)

    other = Guard(
        jwt=None,
        limits=LimitConfig(default="5/minute", storage_uri="redis://127.0.0.1:1/0"),
        detectors=[detector],
        policy=Policy(risk=RiskPolicy(penalty_seconds=120)),
    )  # another replica: its own box is empty
    calls = detector.calls
    flow = other.flow(request(identity=Identity(client_id="thief"), timestamp=now))
    effect = next(flow)
    assert isinstance(effect, HitLimits)
    with pytest.raises(StopIteration) as stop:
        flow.send(batch(effect, boxed=True))
    refused = stop.value.value
    assert refused.action is Action.BLOCK and refused.reasons == ("risk:penalty_box",)
    assert refused.problem is not None and refused.problem.code == "suspicious_usage"
    assert ("retry-after", "101") in refused.problem.headers
    assert detector.calls == calls
    assert other.risk is not None and other.risk.boxed_until("thief", now + 99) is not None
    # from its own box now: it only reads the client's releases (nothing charged)
    flow = other.flow(request(identity=Identity(client_id="thief"), timestamp=now + 1))
    effect = next(flow)
    assert isinstance(effect, HitLimits) and effect.checks == (release,)
    with pytest.raises(StopIteration) as stop:
        flow.send(batch(effect, boxed=False))
    assert stop.value.value.reasons == ("risk:penalty_box",)
    # released by an operator (Guard.release): it forgets its box and judges the request
    flow = other.flow(request(identity=Identity(client_id="thief"), timestamp=now + 2))
    effect = flow.send(batch(next(flow), boxed=False, releases=1))  # type: ignore[arg-type]
    assert isinstance(effect, HitLimits) and effect.checks[:3] == (box, level, release)
    assert other.risk.boxed_until("thief", now + 2) is None
    effect = flow.send(batch(effect, boxed=False, releases=1))
    assert isinstance(effect, RunDetector)  # the same release read again: nothing more to forget
    assert other.risk.risk("thief", now + 2) == 0.0

    calm = StaticDetector(0.0)  # a third replica: its detector sees nothing, the level says degrade
    third = Guard(
        jwt=None,
        limits=LimitConfig(default="5/minute", storage_uri="redis://127.0.0.1:1/0"),
        detectors=[calm],
        policy=Policy(risk=RiskPolicy(penalty_seconds=120)),
    )
    flow = third.flow(request(identity=Identity(client_id="thief"), timestamp=now))
    effect = flow.send(batch(next(flow), boxed=False, level=3))  # type: ignore[arg-type]
    effect = flow.send(calm.score(effect.observation))
    assert isinstance(effect, HitLimits) and effect.checks[0].key == ("risk", "thief")  # no raise
    with pytest.raises(StopIteration) as stop:
        flow.send(batch(effect, boxed=False))
    degraded = stop.value.value
    assert degraded.action is Action.DEGRADE and "carried:replica" in degraded.reasons
    assert degraded.body is not None and "logprobs" not in json.loads(degraded.body)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("2001:db8:0:1:ffff:ffff:ffff:ffff", "2001:db8:0:1::/64"),
        ("2001:DB8:0:1::2%eth0", "2001:db8:0:1::/64"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("not-an-address:1", "not-an-address:1"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_address_key(address: str | None, key: str) -> None:
    from distillguard.request import address_key

    assert address_key(address) == key


@pytest.mark.parametrize("rotate", [False, True])
def test_anonymous_and_failed_auth_windows_hold_an_ipv6_subscriber(rotate: bool) -> None:
    """Anonymous clients and failed-authentication windows count an IPv6 client by its /64:
    walking through the addresses of one allocation buys no fresh quota."""
    from distillguard.identity import JWTConfig

    addresses = [f"2001:db8::{i + 1:x}" if rotate else "2001:db8::1" for i in range(4)]

    def run(guard: Guard, authorization: str | None) -> list[str]:
        perform = guard.sync_performer()
        return [
            guard.decide(request(None, client_address=a, authorization=authorization), perform).action.value
            for a in addresses
        ]

    anonymous = Guard(jwt=None, limits=LimitConfig(default="2/minute"))
    assert run(anonymous, None) == ["allow", "allow", "rate_limited", "rate_limited"]
    jwt = JWTConfig(algorithms=["HS256"], key=b"flow-test-secret-0123456789abcdef", issuer="i", audience="a")
    failures = Guard(jwt=jwt, limits=LimitConfig(auth_failures="2/minute"))
    assert run(failures, "Bearer x.y.z") == ["unauthenticated"] * 2 + ["rate_limited"] * 2
    other = run(failures, None)  # no token: these windows never refuse it
    assert other == ["unauthenticated"] * 4


class _Sloppy:
    """A plugin whose result is set by the test."""

    name = "sloppy"

    def __init__(self, result: Any) -> None:
        self.result = result

    def score(self, observation: Observation) -> Any:
        return self.result


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(DetectorResult("sloppy", 0.6, None), id="reasons-none"),  # type: ignore[arg-type]
        pytest.param(DetectorResult("sloppy", 0.6, (), {"level": "high"}), id="signal-not-a-number"),  # type: ignore[dict-item]
        pytest.param(DetectorResult("sloppy", 0.6, (), None), id="signals-none"),  # type: ignore[arg-type]
        pytest.param(DetectorResult("sloppy", 0.6, (), {"x": float("inf")}), id="signal-infinite"),
    ],
)
@pytest.mark.parametrize("risk", [False, True])
def test_a_malformed_plugin_result_is_a_detector_error(result: Any, risk: bool) -> None:
    """A plugin's malformed result never switches the guard off: it is recorded as
    ``detector:sloppy`` and ignored, and the other detector's block still blocks (it failed
    open before, as an internal error)."""
    from distillguard.risk import RiskPolicy

    guard = Guard(
        jwt=None,
        detectors=[_Sloppy(result), StaticDetector(1.0)],
        policy=Policy(risk=RiskPolicy() if risk else None),
    )
    decision = guard.decide(request(), guard.sync_performer())
    assert decision.action is Action.BLOCK
    assert "detector:sloppy" in decision.errors and not any(e.startswith("guard:") for e in decision.errors)


def test_a_plugin_result_carries_its_configured_name_and_token_reasons() -> None:
    """A plugin cannot pose as another detector (nor create metric series with names of its
    choosing), and reasons or signal names that are not short tokens (text that could quote the
    prompt) never reach the span."""
    guard = Guard(
        jwt=None,
        detectors=[
            _Sloppy(DetectorResult("near_duplicate", 0.6, ("ok_reason", "SECRET PROMPT hello"), {"a b": 1.0}))
        ],
    )
    decision = guard.decide(request(), guard.sync_performer())
    (result,) = decision.results
    assert result.detector == "sloppy" and result.reasons == ("ok_reason", "invalid")
    assert dict(result.signals) == {"invalid": 1.0}
    assert decision.action is Action.FLAG and "SECRET" not in " ".join(decision.reasons)


def test_a_detector_cannot_rewrite_what_the_app_gets() -> None:
    """A plugin that edits the parsed document it is shown changes nothing the app receives,
    even when the verdict degrades the request (the degraded body is built from the bytes the
    client sent)."""

    class Rewriter:
        name = "rewriter"

        def score(self, observation: Observation) -> DetectorResult:
            data = observation.query.data
            assert data is not None
            data["messages"][0]["content"] = "INJECTED"
            return DetectorResult(self.name, 0.8)

    guard = Guard(jwt=None, detectors=[Rewriter()])
    decision = guard.decide(request(), guard.sync_performer())
    assert decision.action is Action.DEGRADE and decision.body is not None
    sent = json.loads(decision.body)
    assert sent["messages"][0]["content"] == "hello" and "logprobs" not in sent

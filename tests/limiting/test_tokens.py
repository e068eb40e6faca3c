"""Token budgets: the estimate charged before the call, reconciled with the response's usage
afterwards (JSON and SSE, through the ASGI and the WSGI adapters), with exact numbers."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard import Guard, LimitConfig
from distillguard.limiting import LimitRule
from distillguard.limiting.budget import Budget
from distillguard.limiting.config import parse_limits
from distillguard.limiting.effects import ChargeLimit, RefundLimit
from distillguard.limiting.plan import LimitCheck
from distillguard.limiting.tokens import TokenEstimate
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness as BaseHarness, chat_body

pytestmark = [pytest.mark.timeout(30)]

TOKENS = "1000/minute"
ESTIMATE = 10 + 100  # 40 prompt characters / 4, plus max_tokens 100 x n 1


def build(tracer_provider: Any, **limits: Any) -> Guard:
    config: dict[str, Any] = {
        "default": "1000/minute",
        "rules": [LimitRule(name="tok", limits=TOKENS, unit="tokens")],
    }
    config.update(limits)
    return Guard(jwt=jwt_config(), limits=LimitConfig(**config), tracer_provider=tracer_provider)


class Harness(BaseHarness):
    """The shared harness, reading the memory storage's token windows."""

    @property
    def table(self) -> Any:
        return self.mw._perform.limiter.local.table

    def used(self, rule: str = "tok", text: str = TOKENS, client: str = "client-1") -> int:
        """What the rule's first window holds for ``client``."""
        item = parse_limits(text)[0]
        return int(self.table.get(item.key_for("r", rule, client)))

    def requests_used(self, client: str = "client-1", tier: str = "default") -> int:
        """How many requests the client's (moving) tier window holds."""
        item = parse_limits(self.guard.plan.config.default)[0]
        return int(
            self.table.get_moving_window(item.key_for("c", tier, client), item.amount, item.get_expiry())[1]
        )


@pytest.fixture(params=["asgi", "wsgi"])
def harness(request: pytest.FixtureRequest, tracer_provider: Any) -> Harness:
    return Harness(request.param, build(tracer_provider))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-mode": "json", "x-usage": "10,20"}, 30),  # over-estimate: 80 refunded
        ({"x-mode": "json", "x-usage": "12,500"}, 512),  # under-estimate: 402 more charged
        ({"x-mode": "sse", "x-usage": "9,7"}, 16),  # final usage chunk of a stream
        ({"x-mode": "sse-nousage", "x-deltas": "5"}, 10 + 5),  # estimated prompt + counted deltas
        ({"x-mode": "json-nousage"}, ESTIMATE),  # success without usage: the estimate stays
        ({"x-mode": "error"}, 0),  # the model produced nothing
    ],
)
def test_window_holds_actual_usage_after_the_response(
    harness: Harness, headers: dict[str, str], expected: int
) -> None:
    """After the response the token window holds exactly the tokens the response used."""
    status, _, _ = harness.call(chat_body(), headers=headers)
    assert status in (200, 500)
    assert harness.used() == expected


def test_refused_token_request_consumes_nothing(harness: Harness) -> None:
    """A request whose estimate does not fit is refused and leaves every window as it was
    (the fixed window counts refused hits: they are refunded), the request window included."""
    harness.call(chat_body(), headers={"x-usage": "10,20"})
    assert (harness.used(), harness.requests_used()) == (30, 1)
    status, _, body = harness.call(chat_body(max_tokens=2000))  # estimate 2010 > 970 left
    assert status == 429
    assert b"tok-1000-per-1-minute" in body
    assert (harness.used(), harness.requests_used()) == (30, 1)
    status, _, _ = harness.call(chat_body(max_tokens=900), headers={"x-usage": "10,20"})  # 910 fits
    assert status == 200
    assert harness.used() == 60


def test_estimate_uses_max_tokens_times_n(tracer_provider: Any) -> None:
    """The estimate is prompt tokens + max_tokens x n; without max_tokens the default applies."""
    guard = build(tracer_provider, default_max_tokens=50)
    h = Harness("wsgi", guard)
    h.call(chat_body(max_tokens=100, n=3), headers={"x-mode": "json-nousage"})
    assert h.used() == 10 + 300
    h.call(chat_body(max_tokens=None), headers={"x-mode": "json-nousage"})
    assert h.used() == 310 + 10 + 50


def test_rules_by_model_count_each_model_separately(tracer_provider: Any) -> None:
    """A model rule applies to its models only, with a counter per model."""
    rules = [LimitRule(name="big", limits="2/minute", models=["m-big", "m-huge"])]
    h = Harness("asgi", build(tracer_provider, rules=rules))
    assert [h.call(chat_body(model="m-big"))[0] for _ in range(3)] == [200, 200, 429]
    assert h.call(chat_body(model="m-huge"))[0] == 200
    assert [h.call(chat_body(model="m-small"))[0] for _ in range(3)] == [200, 200, 200]


def test_rules_by_tier_and_route_with_several_windows(tracer_provider: Any) -> None:
    """A rule with two windows applies to its tier on its route prefix only; the tighter window
    refuses first."""
    rules = [LimitRule(name="emb", limits="3/minute;2/second", tiers=["free"], routes=["/v1/embeddings/"])]
    h = Harness("wsgi", build(tracer_provider, rules=rules))
    free = make_token(tier="free")
    results = [h.call(token=free, path="/v1/embeddings/x")[0] for _ in range(3)]
    assert results == [200, 200, 429]
    assert h.call(token=free, path="/v1/chat/completions")[0] == 200
    pro = make_token(tier="pro", sub="p")
    assert [h.call(token=pro, path="/v1/embeddings/x")[0] for _ in range(3)] == [200, 200, 200]


def test_budget_settles_once() -> None:
    """Settling twice yields nothing the second time: a response is never counted twice."""
    check = LimitCheck(
        policy="t",
        item=parse_limits("100/minute")[0],
        key=("k",),
        cost=50,
        strategy="fixed-window",
        unit="tokens",
    )
    budget = Budget(charges=((check, "primary"),), estimate=TokenEstimate(prompt=10, completion=40))
    budget.observe(b'{"usage":{"prompt_tokens":5,"completion_tokens":5,"total_tokens":10}}')
    assert list(budget.settle(200)) == [RefundLimit(check, 40, "primary")]
    assert list(budget.settle(200)) == []
    over = Budget(charges=((check, "fallback"),), estimate=TokenEstimate(prompt=10, completion=40))
    over.observe(b'{"usage":{"total_tokens":80}}')
    assert list(over.settle(200)) == [ChargeLimit(check, 30, "fallback")]


def test_an_app_failing_mid_response_keeps_the_estimate(harness: Harness) -> None:
    """An app that raises after starting its stream leaves the estimate charged, on both
    adapters (nothing says how much it produced)."""
    import contextlib

    with contextlib.suppress(Exception):
        harness.call(chat_body(), headers={"x-mode": "raise"})
    assert harness.used() == ESTIMATE


SIDES = [
    LimitRule(name="tok", limits="100000/minute", unit="tokens"),
    LimitRule(name="in", limits=TOKENS, unit="input_tokens"),
    LimitRule(name="out", limits=TOKENS, unit="output_tokens"),
]


@pytest.fixture(params=["asgi", "wsgi"])
def sides(request: pytest.FixtureRequest, tracer_provider: Any) -> Harness:
    """A harness with a total, an input and an output token window."""
    return Harness(request.param, build(tracer_provider, rules=SIDES))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-mode": "json", "x-usage": "10,20"}, (30, 10, 20)),
        ({"x-mode": "json", "x-usage": "12,500"}, (512, 12, 500)),
        ({"x-mode": "sse", "x-usage": "9,7"}, (16, 9, 7)),
        ({"x-mode": "sse-nousage", "x-deltas": "5"}, (15, 10, 5)),  # the estimated prompt side
        ({"x-mode": "json-nousage"}, (ESTIMATE, 10, 100)),  # success without usage: estimates
        ({"x-mode": "error"}, (0, 0, 0)),
    ],
)
def test_input_and_output_windows_hold_their_side_of_the_usage(
    sides: Harness, headers: dict[str, str], expected: tuple[int, int, int]
) -> None:
    """Each window is charged its side's estimate (10 prompt tokens; max_tokens 100) and holds
    its side of the response's usage afterwards."""
    status, _, _ = sides.call(chat_body(), headers=headers)
    assert status in (200, 500)
    assert (sides.used("tok", "100000/minute"), sides.used("in"), sides.used("out")) == expected


def test_an_output_budget_refuses_by_completion_tokens(sides: Harness) -> None:
    """Long prompts with short answers spend the input window, not the output one; answers
    that used the output window up get the next request refused (429 with the window named),
    and the RateLimit fields carry each window's unit."""
    for _ in range(3):
        status, headers, _ = sides.call(chat_body("p" * 400, max_tokens=5), headers={"x-usage": "100,5"})
        assert status == 200
    assert (sides.used("in"), sides.used("out")) == (300, 15)
    assert 'distillguard-unit="output_tokens"' in headers["ratelimit-policy"]
    assert 'distillguard-unit="input_tokens"' in headers["ratelimit-policy"]
    status, _, _ = sides.call(chat_body(max_tokens=100), headers={"x-usage": "10,985"})
    assert status == 200 and sides.used("out") == 1000
    status, _, body = sides.call(chat_body(max_tokens=10))
    assert status == 429 and b"out-1000-per-1-minute" in body


def test_an_embedding_is_not_counted_by_an_output_window(tracer_provider: Any) -> None:
    """A request that cannot produce completion tokens is neither charged nor refused by an
    output window, even a full one."""
    guard = build(tracer_provider, rules=[LimitRule(name="out", limits="10/minute", unit="output_tokens")])
    harness = Harness("wsgi", guard)
    status, _, _ = harness.call(chat_body(max_tokens=8), headers={"x-usage": "10,30"})
    assert status == 200 and harness.used("out", "10/minute") == 30  # the answer went past it
    embedding = b'{"model": "e", "input": "some text to embed"}'
    status, headers, _ = harness.call(embedding, path="/v1/embeddings")
    assert status == 200
    assert "out-" not in headers.get("ratelimit-policy", "")
    assert harness.call(chat_body(max_tokens=1))[0] == 429


def test_unknown_units_are_refused() -> None:
    from distillguard.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="input_tokens"):
        LimitRule(name="x", limits="1/minute", unit="completion_tokens")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fixed window"):
        LimitRule(name="x", limits="1/minute", unit="output_tokens", strategy="moving-window")

"""Cost budgets (``LimitRule(unit="cost")``): the tokens' price by model, estimated before the
call and reconciled with the response's usage, in micros of the prices' currency unit, through
the ASGI and the WSGI adapters, with exact numbers."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard import Guard, LimitConfig
from distillguard.errors import ConfigurationError
from distillguard.limiting import LimitRule, Price
from distillguard.limiting.config import parse_limits
from distillguard.limiting.rules import COST_SCALE
from tests.helpers import jwt_config
from tests.limiting.apps import Harness as BaseHarness, chat_body

pytestmark = [pytest.mark.timeout(30)]

# 2 per million prompt tokens, 10 per million completion tokens; "big" costs ten times as much
PRICES = {"*": Price(2, 10), "big": Price(20, 100)}
SPEND = "1/minute"  # one unit a minute: 1,000,000 micros
# the default request: 40 prompt characters (10 tokens), max_tokens 100
ESTIMATE = 10 * 2 + 100 * 10


def build(tracer_provider: Any, *rules: LimitRule, **limits: Any) -> Guard:
    config: dict[str, Any] = {
        "default": "1000/minute",
        "rules": list(rules) or [LimitRule(name="spend", limits=SPEND, unit="cost", prices=PRICES)],
    }
    config.update(limits)
    return Guard(jwt=jwt_config(), limits=LimitConfig(**config), tracer_provider=tracer_provider)


def window_key(*ids: str) -> str:
    """The storage key of the cost window (it counts micros: its amount is scaled)."""
    item = parse_limits(SPEND)[0]
    return type(item)(item.amount * COST_SCALE, item.multiples, item.namespace).key_for(*ids)


class Harness(BaseHarness):
    """The shared harness, reading the memory storage's cost window."""

    def spent(self, *ids: str) -> int:
        """The micros the cost window of ``ids`` holds (the default rule's for client-1)."""
        table = self.mw._perform.limiter.local.table
        return int(table.get(window_key(*(ids or ("r", "spend", "client-1")))))


@pytest.fixture(params=["asgi", "wsgi"])
def harness(request: pytest.FixtureRequest, tracer_provider: Any) -> Harness:
    return Harness(request.param, build(tracer_provider))


@pytest.mark.parametrize(
    ("model", "headers", "expected"),
    [
        ("m1", {"x-mode": "json", "x-usage": "10,20"}, 10 * 2 + 20 * 10),  # refunded down to 220
        ("m1", {"x-mode": "json", "x-usage": "12,500"}, 12 * 2 + 500 * 10),  # 4,000 more charged
        ("big", {"x-mode": "json", "x-usage": "10,20"}, 10 * 20 + 20 * 100),  # the model's price
        ("m1", {"x-mode": "sse", "x-usage": "9,7"}, 9 * 2 + 7 * 10),  # a stream's usage chunk
        ("m1", {"x-mode": "sse-nousage", "x-deltas": "5"}, 10 * 2 + 5 * 10),  # estimated prompt + deltas
        ("m1", {"x-mode": "json-nousage"}, ESTIMATE),  # success without usage: the estimate stays
        ("big", {"x-mode": "json-nousage"}, 10 * ESTIMATE),
        ("m1", {"x-mode": "error"}, 0),  # the model produced nothing
    ],
)
def test_the_window_holds_what_the_answer_cost(
    harness: Harness, model: str, headers: dict[str, str], expected: int
) -> None:
    """After the response the cost window holds the price of the tokens the response used, at
    the request's model's price ("*" for a model not listed)."""
    status, _, _ = harness.call(chat_body(model=model), headers=headers)
    assert status in (200, 500)
    assert harness.spent() == expected


def test_one_budget_across_models_refuses_at_its_price(harness: Harness) -> None:
    """One budget spans the models: answers of the expensive model use it up faster, and a
    request whose estimated cost does not fit is refused (429 naming the window), charging
    nothing; a cheaper request that fits still goes through."""
    for _ in range(4):  # 4 x (200 + 200,000) micros of "big"
        status, headers, _ = harness.call(
            chat_body(model="big", max_tokens=2000), headers={"x-usage": "10,2000"}
        )
        assert status == 200
    assert harness.spent() == 4 * (10 * 20 + 2000 * 100)
    assert 'q=1000000;w=60;distillguard-unit="cost-micros"' in headers["ratelimit-policy"]
    assert '"spend-1-per-1-minute";r=199200;' in headers["ratelimit"]
    # estimated 200 + 200,000 micros: more than the 199,200 left
    status, _, body = harness.call(chat_body(model="big", max_tokens=2000))
    assert status == 429
    assert b"spend-1-per-1-minute" in body
    assert harness.spent() == 800_800
    # the same request for the default price (20 + 20,000) fits
    status, _, _ = harness.call(chat_body(max_tokens=2000), headers={"x-usage": "10,2000"})
    assert status == 200
    assert harness.spent() == 800_800 + 20 + 20_000


def test_a_request_costing_more_than_the_whole_budget_is_refused(harness: Harness) -> None:
    """A request whose estimate alone is over the window (10,000 output tokens of "big": one
    unit) can never fit, and is refused without being charged."""
    status, _, _ = harness.call(chat_body(model="big", max_tokens=10_000))
    assert status == 429
    assert harness.spent() == 0


def test_a_free_model_is_not_counted(tracer_provider: Any) -> None:
    """A model priced at zero is neither charged nor refused by the cost window, even when the
    budget is used up."""
    rule = LimitRule(name="spend", limits=SPEND, unit="cost", prices={"*": Price(2, 10), "free": Price(0, 0)})
    h = Harness("asgi", build(tracer_provider, rule))
    assert h.call(chat_body(max_tokens=99_000), headers={"x-usage": "10,99000"})[0] == 200
    assert h.spent() == 20 + 990_000
    assert h.call(chat_body(max_tokens=5_000))[0] == 429
    assert h.call(chat_body(model="free", max_tokens=5_000))[0] == 200
    assert h.spent() == 20 + 990_000


def test_a_cost_rule_for_listed_models_needs_no_default_price(tracer_provider: Any) -> None:
    """A cost rule limited to its models, each priced, needs no "*": other models are not
    charged; its counters are per model, like any rule that lists models."""
    rule = LimitRule(name="spend", limits=SPEND, unit="cost", models=["big"], prices={"big": Price(20, 100)})
    h = Harness("wsgi", build(tracer_provider, rule))
    assert h.call(chat_body(model="m1"), headers={"x-usage": "10,20"})[0] == 200
    assert h.call(chat_body(model="big"), headers={"x-usage": "10,20"})[0] == 200
    assert h.spent("r", "spend", "client-1", "big") == 10 * 20 + 20 * 100
    assert h.spent("r", "spend", "client-1", "m1") == 0


def test_openai_style_fields_leave_cost_windows_out(tracer_provider: Any) -> None:
    """OpenAI's x-ratelimit fields have no spend: a cost window stays out of its token fields,
    which show the token window only."""
    rules = (
        LimitRule(name="spend", limits=SPEND, unit="cost", prices=PRICES),
        LimitRule(name="tok", limits="5000/minute", unit="tokens"),
    )
    h = Harness("asgi", build(tracer_provider, *rules, header_style="openai"))
    _, headers, _ = h.call(chat_body(), headers={"x-usage": "10,20"})
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert headers["x-ratelimit-remaining-tokens"] == str(5000 - 110)
    assert "ratelimit-policy" not in headers


def test_an_undisclosed_cost_window_is_named_by_its_rule(tracer_provider: Any) -> None:
    """A refusal by a cost window that is not disclosed names the rule, never its quota."""
    rule = LimitRule(name="spend", limits=SPEND, unit="cost", prices=PRICES, headers=False)
    h = Harness("wsgi", build(tracer_provider, rule))
    status, headers, body = h.call(chat_body(max_tokens=200_000))
    assert status == 429
    assert b'"spend"' in body and b"per-1-minute" not in body
    assert "ratelimit-policy" not in headers


def test_a_built_rule_keeps_its_prices() -> None:
    """Changing the dict a rule was built from changes nothing in the rule."""
    prices = {"*": Price(2, 10)}
    rule = LimitRule(name="spend", limits=SPEND, unit="cost", prices=prices)
    prices["*"] = Price(0, 0)
    assert rule.price_for("any") == Price(2, 10)


def test_price_micros_round_up_and_ignore_float_noise() -> None:
    """Micros are rounded up, after float noise is rounded away: 100 tokens at 0.3 per million
    cost 30 micros, not 31; one token at 0.5 costs 1."""
    assert Price(0.3, 0).micros(100, 0) == 30
    assert Price(0, 0.5).micros(0, 1) == 1
    assert Price(2.5, 10).micros(1000, 500) == 7500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit": "cost"}, "needs a price for every model"),
        ({"unit": "cost", "prices": {"big": Price(1, 1)}}, "needs a price for every model"),
        ({"unit": "cost", "models": ["a", "b"], "prices": {"a": Price(1, 1)}}, "needs a price"),
        ({"unit": "cost", "prices": {"*": (1, 1)}}, "must map model names to Price"),
        ({"unit": "tokens", "prices": PRICES}, "prices apply to unit='cost' only"),
        ({"unit": "cost", "prices": PRICES, "strategy": "moving-window"}, "fixed window"),
    ],
)
def test_cost_rules_are_checked_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LimitRule(name="spend", limits=SPEND, **kwargs)


@pytest.mark.parametrize("side", [-1, float("inf"), float("nan"), 1e10, True, "1"])
def test_prices_must_be_finite_and_not_negative(side: Any) -> None:
    with pytest.raises(ConfigurationError, match="Price sides"):
        Price(side, 1)


def test_the_dearest_price_keeps_the_largest_usage_finite() -> None:
    """The usage reader takes counts of up to 18 digits: at the highest price their cost is
    still a number (a float overflow would fail the request)."""
    assert Price(1e9, 1e9).micros(10**18 - 1, 10**18 - 1) > 10**27

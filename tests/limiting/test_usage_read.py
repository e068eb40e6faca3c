"""Reading a client's limit windows (``Guard.usage``): every window that applies to it (tier,
tenant, request, token and spend rules), with exact amounts after real requests through the
ASGI and the WSGI adapters, and nothing charged by the read."""

from __future__ import annotations

import asyncio
import time

import pytest

from distillguard import Guard, LimitConfig
from distillguard.limiting import LimitRule, Price, WindowUsage
from tests.helpers import ISSUER, jwt_config, make_token
from tests.limiting.apps import Harness, chat_body

pytestmark = [pytest.mark.timeout(30)]

RULES = (
    LimitRule(name="tokens", limits="10000/hour", unit="tokens"),
    LimitRule(name="spend", limits="5/day", unit="cost", prices={"*": Price(2, 10)}),
    LimitRule(name="chat", limits="3/minute", routes=("/v1/chat/completions",)),
    LimitRule(name="big", limits="7/minute", models=("big",)),
    LimitRule(name="org", limits="50/hour", per="tenant"),
    LimitRule(name="pro-only", limits="9/minute", tiers=("pro",)),
)


def build(strategy: str = "moving-window") -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(
            default="10/minute;100/day", tiers={"pro": "20/minute"}, rules=RULES, strategy=strategy
        ),
    )


def table(windows: tuple[WindowUsage, ...]) -> dict[str, tuple[str, int, int, int]]:
    return {w.policy: (w.unit, w.limit, w.used, w.remaining) for w in windows}


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_the_windows_hold_what_the_requests_used(kind: str, strategy: str) -> None:
    """Two requests of model ``big`` (usage 10 + 20 tokens each) and one of ``m1`` (usage 5 +
    5): each window shows exactly what was charged, the cost window in micros; the route rule
    is read for every route or for its own, the per-model rule only for its model, the
    per-tenant rule never for a client without a tenant, the pro tier's rule never for a
    default-tier client."""
    guard = build(strategy)
    h = Harness(kind, guard)
    try:
        for model, usage in (("big", "10,20"), ("big", "10,20"), ("m1", "5,5")):
            assert h.call(chat_body(model=model), headers={"x-usage": usage})[0] == 200
        start = time.time()
        seen = guard.usage("client-1", model="big")
        assert table(seen) == {
            "10-per-1-minute": ("requests", 10, 3, 7),
            "100-per-1-day": ("requests", 100, 3, 97),
            "tokens-10000-per-1-hour": ("tokens", 10000, 70, 9930),
            "spend-5-per-1-day": ("cost", 5_000_000, 2 * (10 * 2 + 20 * 10) + (5 * 2 + 5 * 10), 4_999_500),
            "chat-3-per-1-minute": ("requests", 3, 3, 0),
            "big-7-per-1-minute": ("requests", 7, 2, 5),
        }
        minute = next(w for w in seen if w.policy == "10-per-1-minute")
        assert minute.seconds == 60 and start < minute.reset_at <= start + 61
        assert "big-7-per-1-minute" not in table(guard.usage("client-1"))  # no model: left out
        assert "big-7-per-1-minute" in table(guard.usage("client-1", model="big", path="/v1/embeddings"))
        assert "chat-3-per-1-minute" not in table(guard.usage("client-1", path="/v1/embeddings"))
        assert "chat-3-per-1-minute" in table(guard.usage("client-1", path="/v1/chat/completions"))
        assert table(asyncio.run(guard.ausage("client-1", model="big"))) == table(seen)
        # the read charged nothing: the chat window still admits nothing, the minute window 7
        assert h.call(chat_body(model="m1"))[0] == 429
        assert table(guard.usage("client-1", model="big"))["10-per-1-minute"][2] == 3
    finally:
        h.close()


def test_other_clients_tiers_and_tenants_have_their_own_windows() -> None:
    guard = build()
    h = Harness("wsgi", guard)
    try:
        pro = make_token(sub="ann", tier="pro")
        assert h.call(chat_body(), token=pro, headers={"x-usage": "1,1"})[0] == 200
        ann = table(guard.usage("ann", tier="pro", tenant=ISSUER))
        assert ann["20-per-1-minute"] == ("requests", 20, 1, 19)
        assert ann["pro-only-9-per-1-minute"] == ("requests", 9, 1, 8)
        assert "10-per-1-minute" not in ann
        assert ann["org-50-per-1-hour"][2] == 1  # the tenant's counter
        nobody = table(guard.usage("nobody"))
        assert nobody["10-per-1-minute"] == ("requests", 10, 0, 10)
        assert "org-50-per-1-hour" not in nobody and "pro-only-9-per-1-minute" not in nobody
    finally:
        h.close()


def test_a_guard_without_limits_has_no_windows() -> None:
    assert Guard(jwt=jwt_config(), limits=LimitConfig(default="")).usage("client-1") == ()

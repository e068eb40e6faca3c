"""``LimitConfig(refund_server_errors=True)``: a request the app answers with a 5xx gets its
request windows back, through the ASGI and the WSGI adapters and with each strategy; a 4xx, a
success and an app that raises keep their charge; the option is off by default."""

from __future__ import annotations

import pytest

from distillguard import Guard, LimitConfig
from distillguard.limiting import LimitRule
from tests.helpers import jwt_config
from tests.limiting.apps import Harness, chat_body

pytestmark = [pytest.mark.timeout(30)]


def used(guard: Guard) -> dict[str, int]:
    return {w.policy: w.used for w in guard.usage("client-1", model="m1")}


def call(h: Harness, **headers: str) -> int:
    """One request (``-1`` when the app's exception reached the caller, as a server sees it)."""
    try:
        return h.call(chat_body(), headers=headers)[0]
    except RuntimeError:
        return -1


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_server_errors_give_the_request_windows_back(kind: str, strategy: str) -> None:
    rules = (
        LimitRule(name="chat", limits="100/hour"),
        LimitRule(name="tok", limits="100000/hour", unit="tokens"),
    )
    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="5/minute", strategy=strategy, rules=rules, refund_server_errors=True),
    )
    h = Harness(kind, guard)
    try:
        assert call(h) == 200
        assert used(guard) == {"5-per-1-minute": 1, "chat-100-per-1-hour": 1, "tok-100000-per-1-hour": 30}
        assert call(h, **{"x-mode": "error"}) == 500
        assert call(h, **{"x-mode": "error", "x-status": "503"}) == 503
        assert used(guard) == {"5-per-1-minute": 1, "chat-100-per-1-hour": 1, "tok-100000-per-1-hour": 30}
        assert call(h, **{"x-mode": "error", "x-status": "400"}) == 400  # the client's own error
        assert used(guard)["5-per-1-minute"] == 2
        # an app that raises keeps what it was charged, as its token estimate (docs/limits.md)
        assert call(h, **{"x-mode": "crash"}) in (-1, 500)
        assert used(guard)["5-per-1-minute"] == 3
        # the refunds are real quota: two more requests fit in the 5 a minute
        assert [call(h) for _ in range(3)] == [200, 200, 429]
    finally:
        h.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_server_errors_are_charged_by_default(kind: str) -> None:
    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="3/minute"))
    h = Harness(kind, guard)
    try:
        assert [call(h, **{"x-mode": "error"}) for _ in range(3)] == [500, 500, 500]
        assert call(h) == 429
    finally:
        h.close()


def test_the_budget_refunds_each_request_window_once() -> None:
    """Settling twice (a second call by an adapter) yields the refunds once."""
    from distillguard.limiting.budget import Budget
    from distillguard.limiting.config import parse_limits
    from distillguard.limiting.plan import LimitCheck

    check = LimitCheck(policy="p", item=parse_limits("5/minute")[0], key=("c", "x"), cost=3)
    budget = Budget(refunds=((check, "primary"),))
    effects = list(budget.settle(502))
    assert [(type(e).__name__, e.amount) for e in effects] == [("RefundLimit", 3)]  # type: ignore[attr-defined]
    assert list(budget.settle(502)) == []
    assert list(Budget(refunds=((check, "primary"),)).settle(200)) == []
    assert list(Budget(refunds=((check, "primary"),)).settle(None)) != []

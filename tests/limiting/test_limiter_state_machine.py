"""The limiter as a state machine (reliability.md F3): hypothesis drives the whole pipeline (a
real JWT per client, the WSGI adapter, the guard, the memory storage) through requests of
several costs from clients of two tiers (and, for the moving window, the same through the ASGI
adapter and the async limiter), and a clock moved by steps that land on window
boundaries, after them and just before them. Rules and invariants:

* a request whose cost is over one of its windows is refused at once (R5);
* the moving window admits a request exactly when a model of the client's admitted requests
  has room in every window (R1), so a refused request keeps nothing;
* in any span of one period a client never has more than the limit admitted (moving window),
  twice the limit (fixed window, across a boundary: R3; the sliding window counter too, R4,
  when both windows fill at their ends);
* every refusal is a 429 problem with an integer ``Retry-After`` >= 1, and waiting that long
  gets the same request through (but a request over a window's whole quota gets
  ``request_over_quota`` and no ``Retry-After``) (moving and fixed windows: ``Retry-After`` says when ``c``
  units are free, not when the oldest entry expires);
* every answer's ``RateLimit`` field gives each window's remaining quota between 0 and its quota
  (for the moving window, exactly the model's), and the refused requests never reach the app.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig
from distillguard.testing import jwt_config, make_token
from tests.limiting.apps import asgi_call, chat_body, wsgi_call

START = float(int(time.time()))
TIERS = {"free": ((4, 10), (9, 60)), "pro": ((6, 60),)}
"""Windows by tier, as (limit, period in seconds)."""
CLIENTS = {"alice": "free", "bob": "free", "carol": "pro"}
STEPS = [0.0, 0.25, 0.999, 1.0, 2.5, 5.0, 9.999, 10.0, 10.001, 30.0, 59.999, 60.0, 61.0]
"""Clock steps: window lengths exactly, just under and just over, and fractions."""
_STATE = re.compile(r'"(?P<name>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)')


def _spec(windows: tuple[tuple[int, int], ...]) -> str:
    return ";".join(f"{limit}/{period}second" for limit, period in windows)


def _name(limit: int, period: int) -> str:
    return f"{limit}-per-{period}-second"


@dataclass
class _Client:
    token: str
    windows: tuple[tuple[int, int], ...]
    admitted: list[tuple[float, int]] = field(default_factory=list)  # (time, cost), in order
    refused: tuple[int, int] | None = None  # (cost, Retry-After) of the last request, if refused

    def used(self, period: int, now: float) -> int:
        """Cost admitted in the moving window of ``period`` ending now (an entry counts for
        ``period`` seconds)."""
        return sum(c for t, c in self.admitted if t > now - period)

    def densest(self, period: int) -> int:
        """The most cost admitted within any span of ``period`` seconds."""
        best = 0
        for i, (start, _) in enumerate(self.admitted):
            best = max(best, sum(c for t, c in self.admitted[i:] if t < start + period))
        return best


class LimiterMachine(RuleBasedStateMachine):
    strategy = "moving-window"

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.calls = 0
        guard = Guard(
            jwt=jwt_config(),
            limits=LimitConfig(
                default=_spec(TIERS["free"]),
                tiers={"pro": _spec(TIERS["pro"])},
                strategy=self.strategy,
            ),
            clock=lambda: self.now,
        )
        self.guard = guard
        self.mw = DistillGuardWSGIMiddleware(self._app, guard=guard)
        self.clients = {
            name: _Client(
                make_token(name, tier=tier if tier != "free" else None, ttl=86_400, now=START),
                TIERS[tier],
            )
            for name, tier in CLIENTS.items()
        }

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        self.calls += 1
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"choices": []}']

    @initialize()
    def started(self) -> None:
        self.now = START

    def _call(self, body: bytes, token: str) -> tuple[int, dict[str, str], bytes]:
        status, headers, payload = wsgi_call(self.mw, body, token=token)
        return status, headers, payload

    def _send(self, name: str, cost: int) -> tuple[int, dict[str, str], bytes]:
        client = self.clients[name]
        calls = self.calls
        status, headers, body = self._call(chat_body(n=cost), client.token)
        assert status in (200, 429), (status, body)
        assert self.calls == calls + (status == 200)  # a refused request never reaches the app
        over = any(cost > limit for limit, _ in client.windows)
        assert ("retry-after" in headers) == (status == 429 and not over)
        if status == 429:
            problem = json.loads(body)
            assert headers["content-type"] == "application/problem+json"
            assert problem["status"] == 429
            if over:  # no wait would admit it
                assert problem["code"] == "request_over_quota" and headers["x-should-retry"] == "false"
                return status, headers, body
            assert problem["code"] == "rate_limited"
            retry_after = int(headers["retry-after"])
            assert retry_after >= 1
            client.refused = (cost, retry_after)
        else:
            client.admitted.append((self.now, cost))
            client.refused = None
        states = {
            m["name"]: (int(m["r"]), int(m["t"])) for m in _STATE.finditer(headers.get("ratelimit", ""))
        }
        names = [_name(limit, period) for limit, period in client.windows]
        if status == 200:
            assert sorted(states) == sorted(names)
        else:  # the windows charged up to the one that refused
            assert set(states) <= set(names) and set(json.loads(body)["violated-policies"]) <= set(states)
        for limit, period in client.windows:
            if _name(limit, period) not in states:
                continue
            remaining, reset = states[_name(limit, period)]
            assert 0 <= remaining <= limit and 0 <= reset <= period
            if self.strategy == "moving-window":
                assert remaining == limit - client.used(period, self.now)
        return status, headers, body

    @rule(name=st.sampled_from(sorted(CLIENTS)), cost=st.sampled_from([1, 1, 1, 2, 3]))
    def request(self, name: str, cost: int) -> None:
        client = self.clients[name]
        fits = all(client.used(period, self.now) + cost <= limit for limit, period in client.windows)
        status, _, _ = self._send(name, cost)
        if self.strategy == "moving-window":
            assert (status == 200) == fits, (name, cost, client.admitted, self.now)

    @rule(name=st.sampled_from(sorted(CLIENTS)))
    def request_over_a_window(self, name: str) -> None:
        """A cost above the client's smallest window is never admitted, whatever its history."""
        client = self.clients[name]
        status, _, _ = self._send(name, min(limit for limit, _ in client.windows) + 1)
        assert status == 429

    @rule(step=st.sampled_from(STEPS))
    def wait(self, step: float) -> None:
        self.now += step

    @precondition(lambda self: any(c.refused for c in self.clients.values()))
    @rule(data=st.data())
    def retry_after_the_wait(self, data: st.DataObject) -> None:
        """Wait the ``Retry-After`` of a refused request and send it again."""
        name = data.draw(st.sampled_from(sorted(n for n, c in self.clients.items() if c.refused)))
        cost, retry_after = self.clients[name].refused or (0, 0)
        self.now += retry_after
        status, _, _ = self._send(name, cost)
        if self.strategy in ("moving-window", "fixed-window"):
            assert status == 200, (name, cost, retry_after, self.clients[name].admitted, self.now)

    @invariant()
    def within_the_bound(self) -> None:
        for client in self.clients.values():
            for limit, period in client.windows:
                densest = client.densest(period)
                if self.strategy == "moving-window":
                    assert densest <= limit
                elif self.strategy == "fixed-window":
                    assert densest <= 2 * limit
                else:  # up to twice too (test_window_bounds.py: two late bursts)
                    assert densest <= 2 * limit


class FixedWindowMachine(LimiterMachine):
    strategy = "fixed-window"


class SlidingWindowCounterMachine(LimiterMachine):
    strategy = "sliding-window-counter"


class AsgiMachine(LimiterMachine):
    """The same machine through the ASGI adapter (and so the async limiter)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.asgi = DistillGuardMiddleware(self._asgi_app, guard=self.guard)

    async def _asgi_app(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.calls += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"choices": []}'})

    def _call(self, body: bytes, token: str) -> tuple[int, dict[str, str], bytes]:
        return self.loop.run_until_complete(asgi_call(self.asgi, body, token=token))

    def teardown(self) -> None:
        self.loop.close()


_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize(
    "machine", [LimiterMachine, FixedWindowMachine, SlidingWindowCounterMachine, AsgiMachine]
)
def test_the_limiter_keeps_its_bounds_under_any_sequence(machine: type[LimiterMachine]) -> None:
    case = machine.TestCase
    case.settings = _SETTINGS
    case("runTest").runTest()

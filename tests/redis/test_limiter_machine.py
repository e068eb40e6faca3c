"""The moving window on a real redis-server as a state machine (reliability.md F3, on Redis):
hypothesis drives the WSGI pipeline through requests of several costs from two clients and
real waits across the windows' ends, while Redis stamps every entry with its own clock.

The test cannot set Redis' clock, so its model keeps, for each admitted request, the interval
of wall time in which Redis stamped it (before and after the call), and for each request the
interval in which Redis judged it. An entry then counts for certain, not at all, or maybe; a
request must be admitted when it fits even with every "maybe" counted, refused when it does
not fit with only the certain ones, and may go either way between. Invariants:

* that admission rule, for every window of the client;
* the ``RateLimit`` remaining quota of every window is within the model's bounds;
* each window's Redis list holds exactly the entries that still count after a charge (the
  script trims the expired ones; no more than the limit, never an expired one);
* a refused request reaches neither the app nor the lists.

The exact expiry of one entry (counted the instant before its window ends, not after) is
checked by ``test_redis_limits.py::test_a_charge_drops_the_expired_entries_of_its_moving_window``.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, rule
from opentelemetry.trace import NoOpTracerProvider

from distillguard import DistillGuardWSGIMiddleware, Guard, LimitConfig
from distillguard.testing import jwt_config, make_token
from tests.limiting.apps import chat_body, wsgi_call
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

WINDOWS = ((3, 1), (5, 3))
"""(limit, period in seconds) of every client."""
CLIENTS = ("alice", "bob")
WAITS = [0.0, 0.15, 0.5, 1.05]
_STATE = re.compile(r'"(?P<name>[^"]+)";r=(?P<r>\d+);')
_prefixes = itertools.count()
_SERVER: list[RedisServer] = []


@dataclass
class _Client:
    token: str
    admitted: list[tuple[float, float, int]] = field(default_factory=list)  # stamped within (lo, hi)

    def used(self, period: int, lo: float, hi: float) -> tuple[int, int]:
        """``(certain, possible)`` cost counted by a window of ``period`` for a judgement made
        at some instant within ``(lo, hi)``: an entry counts at ``s`` when stamped after
        ``s - period``."""
        certain = sum(c for a, _, c in self.admitted if a > hi - period)
        possible = sum(c for _, b, c in self.admitted if b > lo - period)
        return certain, possible


class RedisWindowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = _SERVER[0]
        self.prefix = f"machine{next(_prefixes)}-{time.time_ns()}"
        spec = ";".join(f"{limit} per {period} second" for limit, period in WINDOWS)
        guard = Guard(
            jwt=jwt_config(),
            limits=LimitConfig(default=spec, storage_uri=self.server.url, key_prefix=self.prefix),
            tracer_provider=NoOpTracerProvider(),
        )
        self.guard = guard
        self.calls = 0
        self.mw = DistillGuardWSGIMiddleware(self._app, guard=guard)
        self.clients = {name: _Client(make_token(name, ttl=3_600)) for name in CLIENTS}

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read()
        self.calls += 1
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"choices": []}']

    def _length(self, name: str, limit: int, period: int) -> int:
        key = f"{self.prefix}:LIMITER/c/default/{name}/{limit}/{period}/second"
        return int(self.server.cli("LLEN", key).strip() or 0)

    @rule(name=st.sampled_from(CLIENTS), cost=st.sampled_from([1, 1, 2, 3]))
    def request(self, name: str, cost: int) -> None:
        client = self.clients[name]
        calls = self.calls
        lo = time.time()
        status, headers, body = wsgi_call(self.mw, chat_body(n=cost), token=client.token)
        hi = time.time()
        bounds = {(limit, period): client.used(period, lo, hi) for limit, period in WINDOWS}
        must = all(possible + cost <= limit for (limit, _), (_, possible) in bounds.items())
        cannot = any(certain + cost > limit for (limit, _), (certain, _) in bounds.items())
        assert status in (200, 429), (status, body)
        assert not (must and status != 200), (name, cost, bounds, client.admitted, lo, hi)
        assert not (cannot and status != 429), (name, cost, bounds, client.admitted, lo, hi)
        assert self.calls == calls + (status == 200)
        if status != 200:
            return
        client.admitted.append((lo, hi, cost))
        states = {m["name"]: int(m["r"]) for m in _STATE.finditer(headers.get("ratelimit", ""))}
        for (limit, period), (certain, possible) in bounds.items():
            remaining = states[f"{limit}-per-{period}-second"]
            assert limit - possible - cost <= remaining <= limit - certain - cost, (remaining, bounds)
            # the list holds what counts: the entries stamped before the window's start are gone
            # (one entry per unit of cost: the layout of limits' moving window)
            length = self._length(name, limit, period)
            assert certain + cost <= length <= min(limit, possible + cost), (length, bounds)

    @rule(name=st.sampled_from(CLIENTS))
    def request_over_a_window(self, name: str) -> None:
        """A cost above the smallest window is refused and leaves the lists as they were."""
        before = [self._length(name, limit, period) for limit, period in WINDOWS]
        status, _, _ = wsgi_call(self.mw, chat_body(n=WINDOWS[0][0] + 1), token=self.clients[name].token)
        assert status == 429
        after = [self._length(name, limit, period) for limit, period in WINDOWS]
        assert after == before or all(a <= b for a, b in zip(after, before, strict=True))

    @rule(seconds=st.sampled_from(WAITS))
    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def teardown(self) -> None:
        assert self.guard.limiter_stats.storage_errors == 0


def test_the_moving_window_on_redis_keeps_its_bounds_under_any_sequence(
    redis_module_server: RedisServer,
) -> None:
    _SERVER[:] = [redis_module_server]
    case = RedisWindowMachine.TestCase
    case.settings = settings(
        max_examples=8,
        stateful_step_count=24,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        # no shrinking: a failing run would sleep through minutes of shorter variants, and the
        # sequence it prints already names each call's interval
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    case("runTest").runTest()

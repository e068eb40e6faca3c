"""Releasing a client (``Guard.release``) across replicas on a real redis-server: the shared
box, level and detector state are cleared, and every replica forgets what it holds on the client
at the client's next request there, whether it kept the box locally or not. And reading where a
client stands (``Guard.status``, ``distillguard status``)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from distillguard import Guard, LimitConfig, Policy
from distillguard.cli import main
from distillguard.detectors import DetectorResult, Observation
from distillguard.detectors._state import LRUStates
from distillguard.errors import StateError
from distillguard.risk import RiskPolicy
from distillguard.settings import guard_from_env
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.servers import BlackHole, RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


class _Count:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Persistent:
    """Scores 1.0 from a client's third request on (its history), 0 before."""

    name = "persistent"

    def __init__(self) -> None:
        self.states: LRUStates[_Count] = LRUStates(_Count, 1000)

    def score(self, observation: Observation) -> DetectorResult:
        state = self.states.get(observation.client_id)
        state.n += 1
        return DetectorResult(self.name, 1.0 if state.n >= 3 else 0.0)


def guard(url: str) -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="100/minute", storage_uri=url),
        detectors=[Persistent()],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
    )


def code(body: bytes) -> str:
    return str(json.loads(body)["code"])


def keys(server: RedisServer, pattern: str) -> list[str]:
    return [k for k in server.cli("--scan", "--pattern", pattern).split() if k]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_release_reaches_every_replica(redis_server: RedisServer, kind: str) -> None:
    """Replica A blocks the thief on its history; B refuses it through the shared box and keeps
    the box locally. A third guard (an operator's) releases it: the box window is gone, and
    both A and B admit the thief's next request, A with a fresh history (its third request
    after the release is the next block). Nothing of another client is touched."""
    a, b = Harness(kind, guard(redis_server.url)), Harness(kind, guard(redis_server.url))
    thief, other = make_token(sub="thief"), make_token(sub="other")
    try:
        assert [a.call(chat_body(), token=thief)[0] for _ in range(2)] == [200, 200]
        status, _, body = a.call(chat_body(), token=thief)
        assert status == 429 and code(body) == "suspicious_usage"
        assert [a.call(chat_body(), token=other)[0] for _ in range(3)] == [200, 200, 429]  # its own
        status, _, body = b.call(chat_body(), token=thief)
        assert status == 429 and code(body) == "suspicious_usage"
        assert b.guard.risk.boxed_until("thief", time.time()) is not None  # held locally
        assert keys(redis_server, "*box*thief*")

        operator = guard(redis_server.url)
        assert operator.release("thief") is True
        assert keys(redis_server, "*box*thief*") == []
        assert keys(redis_server, "*box*other*")  # another client stays boxed
        assert keys(redis_server, "*release*thief*")

        assert b.call(chat_body(), token=thief)[0] == 200  # B forgot its own box
        assert b.guard.risk.boxed_until("thief", time.time()) is None
        assert [a.call(chat_body(), token=thief)[0] for _ in range(2)] == [200, 200]  # history reset
        status, _, body = a.call(chat_body(), token=thief)
        assert status == 429 and code(body) == "suspicious_usage"  # blocked anew on new evidence
        status, _, body = b.call(chat_body(), token=other)
        assert status == 429 and code(body) == "suspicious_usage"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_request_judged_during_a_release_boxes_no_replica(redis_server: RedisServer, kind: str) -> None:
    """Replica A scores the thief's third request on its history, and the thief is released
    (on A) before that request is assessed: the request passes and A writes neither the shared
    box nor a level, so replica B admits the thief too."""
    from tests.test_release import ReleasedMidway

    detector = ReleasedMidway()
    a_guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="100/minute", storage_uri=redis_server.url),
        detectors=[detector],
        policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
    )
    detector.guard = a_guard
    a, b = Harness(kind, a_guard), Harness(kind, guard(redis_server.url))
    thief = make_token(sub="thief")
    try:
        assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 200]
        assert keys(redis_server, "*box*thief*") == [] and keys(redis_server, "*level*thief*") == []
        assert keys(redis_server, "*release*thief*")
        assert b.call(chat_body(), token=thief)[0] == 200
    finally:
        a.close()
        b.close()


def test_releases_are_counted_where_made_and_where_applied(redis_server: RedisServer) -> None:
    """``distillguard.risk.releases``: ``shared`` on the operator's guard, ``seen`` on the
    replica that read and applied it (once), ``process`` for a release this process only."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from distillguard.telemetry.names import ATTR_RELEASE_SCOPE, METRIC_RELEASES
    from tests.telemetry.conftest import metric_points, value_of

    def counted(reader: InMemoryMetricReader) -> dict[str, int]:
        points = metric_points(reader).get(METRIC_RELEASES, [])
        key = ATTR_RELEASE_SCOPE.replace(".", "__")
        return {scope: value_of(points, **{key: scope}) for scope in ("shared", "process", "seen")}

    def metered(url: str) -> tuple[Guard, InMemoryMetricReader]:
        reader = InMemoryMetricReader()
        g = Guard(
            jwt=jwt_config(),
            limits=LimitConfig(default="100/minute", storage_uri=url),
            detectors=[Persistent()],
            policy=Policy(risk=RiskPolicy(penalty_seconds=600)),
            meter_provider=MeterProvider(metric_readers=[reader]),
        )
        return g, reader

    replica, replica_reader = metered(redis_server.url)
    operator, operator_reader = metered(redis_server.url)
    h = Harness("wsgi", replica)
    thief = make_token(sub="thief")
    try:
        assert [h.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
        assert operator.release("thief") is True
        assert [h.call(chat_body(), token=thief)[0] for _ in range(2)] == [200, 200]
        assert counted(operator_reader) == {"shared": 1, "process": 0, "seen": 0}
        assert counted(replica_reader) == {"shared": 0, "process": 0, "seen": 1}
        alone, alone_reader = metered("memory://")
        alone.release("thief")
        assert counted(alone_reader) == {"shared": 0, "process": 1, "seen": 0}
    finally:
        h.close()


def test_a_second_release_is_seen_as_the_first(redis_server: RedisServer) -> None:
    """Each release counts: a replica forgets the client once per release it reads, not at
    every request after one."""
    a = Harness("wsgi", guard(redis_server.url))
    thief = make_token(sub="thief")
    operator = guard(redis_server.url)
    try:
        for _ in range(2):
            assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
            assert operator.release("thief") is True
        assert [a.call(chat_body(), token=thief)[0] for _ in range(4)] == [200, 200, 429, 429]
    finally:
        a.close()


def test_arelease_shares_the_release(redis_server: RedisServer) -> None:
    """The async form does the same on the running loop's connections."""
    a = Harness("asgi", guard(redis_server.url))
    thief = make_token(sub="thief")
    try:
        assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
        assert asyncio.run(guard(redis_server.url).arelease("thief")) is True
        assert a.call(chat_body(), token=thief)[0] == 200
    finally:
        a.close()


def test_a_release_deletes_the_shared_detector_state(redis_server: RedisServer) -> None:
    """The built-in detectors' shared history of the client goes with the release (a replica
    that reads the client afterwards starts from nothing), another client's stays."""
    g = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="100/minute", storage_uri=redis_server.url),
        detectors=["near_duplicate", "template_sweep"],
        policy=Policy(risk=RiskPolicy()),
    )
    h = Harness("wsgi", g)
    try:
        for sub in ("thief", "other"):
            assert h.call(chat_body(), token=make_token(sub=sub))[0] == 200
        assert keys(redis_server, "*state*thief*") and keys(redis_server, "*state*other*")
        assert g.release("thief") is True
        assert keys(redis_server, "*state*thief*") == []
        assert keys(redis_server, "*state*other*")
        assert g.detectors[0].states.peek("thief") is None
    finally:
        h.close()


def test_a_release_with_the_risk_kept_per_process_is_not_shared(redis_server: RedisServer) -> None:
    """With ``RiskPolicy(shared=False)`` each replica keeps its own box and risk: the release
    reaches this process only (and says so), though the shared detector state is deleted."""
    g = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="100/minute", storage_uri=redis_server.url),
        detectors=["near_duplicate"],
        policy=Policy(risk=RiskPolicy(shared=False)),
    )
    h = Harness("wsgi", g)
    try:
        assert h.call(chat_body(), token=make_token(sub="thief"))[0] == 200
        assert keys(redis_server, "*state*thief*")
        assert g.release("thief") is False
        assert keys(redis_server, "*state*thief*") == []
    finally:
        h.close()


def test_a_release_the_storage_does_not_take_raises() -> None:
    """With the storage unreachable the release raises StateError (this process has forgotten
    the client; the call can be repeated)."""
    hole = BlackHole()
    try:
        g = Guard(
            jwt=jwt_config(),
            limits=LimitConfig(default="100/minute", storage_uri=hole.url + "?socket_timeout=0.2"),
            detectors=[Persistent()],
            policy=Policy(risk=RiskPolicy()),
        )
        with pytest.raises(StateError):
            g.release("thief")
    finally:
        hole.close()


SECRET = "release-command-secret-of-at-least-32-bytes"


def test_the_release_command_reaches_a_replica(
    env: Any, capsys: pytest.CaptureFixture[str], redis_server: RedisServer
) -> None:
    """``distillguard release CLIENT`` with the replicas' DISTILLGUARD_* settings: the replica
    that boxed the client admits it at its next request."""
    env(JWT_SECRET=SECRET, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="model-api")
    env(STORAGE_URI=redis_server.url)
    replica = Harness("wsgi", guard_from_env(detectors=[Persistent()]))
    token = make_token(key=SECRET, sub="thief", iss="https://idp.example", aud="model-api")
    try:
        assert [replica.call(chat_body(), token=token)[0] for _ in range(4)] == [200, 200, 429, 429]
        assert main(["release", "thief"]) == 0
        assert "released thief" in capsys.readouterr().out
        assert replica.call(chat_body(), token=token)[0] == 200
    finally:
        replica.close()


@pytest.mark.parametrize("command", ["release", "status"])
def test_the_commands_need_a_shared_storage(
    env: Any, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """On ``memory://`` there is nothing they could reach: a configuration error (2)."""
    env(JWT_SECRET=SECRET, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="model-api")
    assert main([command, "thief"]) == 2
    assert "each process holds its own state" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "says"), [("release", "not released"), ("status", "did not answer")])
def test_the_commands_report_a_storage_that_does_not_answer(
    env: Any, capsys: pytest.CaptureFixture[str], command: str, says: str
) -> None:
    hole = BlackHole()
    try:
        env(JWT_SECRET=SECRET, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="model-api")
        env(STORAGE_URI=hole.url + "?socket_timeout=0.2")
        assert main([command, "thief"]) == 1
        assert says in capsys.readouterr().err
    finally:
        hole.close()


def test_status_reads_the_shared_box_level_and_releases(redis_server: RedisServer) -> None:
    """An operator's guard (which never saw the client) reads the box another replica set, the
    level and the releases; the replica that blocked it also knows its risk and driver; a
    release shows as one release and no box. Reading charges nothing and forgets nothing."""
    a = Harness("wsgi", guard(redis_server.url))
    thief = make_token(sub="thief")
    operator = guard(redis_server.url)
    try:
        assert operator.status("thief").boxed_for is None
        assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
        seen = operator.status("thief")
        assert seen.shared and seen.boxed_for is not None and 590 < seen.boxed_for <= 601
        assert seen.level == 3 and seen.releases == 0 and seen.risk == 0.0 and seen.driver == ""
        here = a.guard.status("thief")
        assert here.level == 3 and here.risk >= 0.9 and here.driver == "persistent"
        assert a.call(chat_body(), token=thief)[0] == 429  # reading changed nothing
        operator.release("thief")
        after = operator.status("thief")
        assert after.boxed_for is None and after.level == 0 and after.releases == 1
        assert asyncio.run(operator.astatus("thief")) == after
    finally:
        a.close()


def test_the_status_command(env: Any, capsys: pytest.CaptureFixture[str], redis_server: RedisServer) -> None:
    """The box, level and releases, and the client's windows: the default limits and a spend
    rule set by environment, the spend in the prices' unit (two answers of 10 + 20 tokens at
    2 and 10 per million: 0.00044)."""
    env(JWT_SECRET=SECRET, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="model-api")
    env(STORAGE_URI=redis_server.url, LIMITS="60/minute;1000/day")
    prices = '{"*": {"input": 2, "output": 10}}'
    env(RULES=f'[{{"name": "spend", "limits": "5/day", "unit": "cost", "prices": {prices}}}]')
    replica = Harness("wsgi", guard_from_env(detectors=[Persistent()]))
    token = make_token(key=SECRET, sub="thief", iss="https://idp.example", aud="model-api")
    try:
        statuses = [replica.call(chat_body(), token=token, headers={"x-usage": "10,20"})[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert main(["status", "thief", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["client"] == "thief" and doc["answered"] is True and doc["level"] == "degrade"
        assert 3500 < doc["boxed_for_seconds"] <= 3600 and doc["releases"] == 0
        windows = {w["policy"]: w for w in doc["windows"]}
        assert set(windows) == {"60-per-1-minute", "1000-per-1-day", "spend-5-per-1-day"}
        assert (windows["60-per-1-minute"]["used"], windows["60-per-1-minute"]["remaining"]) == (2, 58)
        assert 55 <= windows["60-per-1-minute"]["resets_in_seconds"] <= 60
        assert windows["1000-per-1-day"]["window_seconds"] == 86400
        spend = windows["spend-5-per-1-day"]
        assert spend["unit"] == "cost" and spend["limit"] == 5 and spend["used"] == pytest.approx(0.00044)
        assert main(["status", "nobody", "--tier", "free"]) == 0
        out = capsys.readouterr().out
        assert "boxed_for_seconds: None" in out
        assert "window 60-per-1-minute: 0 of 60 requests used, 60 left\n" in out
        assert main(["status", "thief"]) == 0
        out = capsys.readouterr().out
        assert "window spend-5-per-1-day: 0.00044 of 5 spent, 4.99956 left, frees up in " in out
    finally:
        replica.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_usage_reads_the_windows_every_replica_charges(redis_server: RedisServer, kind: str) -> None:
    """Two replicas charge one client; an operator's guard (which never saw it) reads the sum,
    sync and async, and reading charges nothing: the replicas' next request still fits exactly
    as before."""
    a, b = Harness(kind, guard(redis_server.url)), Harness(kind, guard(redis_server.url))
    operator = guard(redis_server.url)
    token = make_token(sub="reader")
    try:
        assert [r.call(chat_body(), token=token)[0] for r in (a, b, a)] == [200, 200, 200]
        (minute,) = operator.usage("reader")
        assert (minute.policy, minute.limit, minute.used) == ("100-per-1-minute", 100, 3)
        assert minute.remaining == 97
        assert time.time() < minute.reset_at <= time.time() + 60
        for _ in range(5):
            (again,) = asyncio.run(operator.ausage("reader"))
            assert again.used == 3
        assert b.call(chat_body(), token=token)[1]["ratelimit"] == '"100-per-1-minute";r=96;t=60'
    finally:
        a.close()
        b.close()


def test_usage_on_a_storage_that_does_not_answer_raises() -> None:
    hole = BlackHole()
    try:
        g = guard(hole.url + "?socket_timeout=0.2")
        with pytest.raises(StateError, match="did not answer"):
            g.usage("reader")
    finally:
        hole.close()

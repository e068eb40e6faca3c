"""The penalty box shared through Redis: a client blocked by one replica is refused by every
replica, in the request's own round trip, without charging its windows; the box ends with the
penalty; it stays local with ``shared=False`` or on memory storage; an outage never turns
the box read into a refusal or a way around ``fail_closed``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from distillguard import Guard, LimitConfig, Policy
from distillguard.risk import RiskPolicy
from tests.helpers import Dial, jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def replica(kind: str, url: str, dial: Dial, strategy: str = "moving-window", **risk: Any) -> Harness:
    """One replica: its own guard, detector and risk table, the limits on ``url``."""
    limits = LimitConfig(default="100/minute", storage_uri=url, strategy=strategy)
    policy = Policy(risk=RiskPolicy(**risk))
    return Harness(kind, Guard(jwt=jwt_config(), limits=limits, detectors=[dial], policy=policy))


def problem(body: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(body)
    return doc


def snapshot(server: RedisServer, key: str) -> str:
    """A key's value, whatever its type."""
    kind = server.cli("TYPE", key).strip()
    reader = {"list": ("LRANGE", key, "0", "-1"), "hash": ("HGETALL", key)}.get(kind, ("GET", key))
    return server.cli(*reader)


def box_keys(server: RedisServer) -> list[str]:
    return [k for k in server.cli("--scan", "--pattern", "*box*").split() if k]


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_block_on_one_replica_holds_on_every_replica(
    redis_server: RedisServer, kind: str, strategy: str
) -> None:
    """Replica A blocks the client; replica B, whose own detector sees nothing, refuses it at
    once with ``suspicious_usage`` and a ``Retry-After`` within the penalty, charges none of
    its windows, runs no detector, and then keeps the box locally; other clients pass."""
    dial_a, dial_b = Dial(), Dial()
    a = replica(kind, redis_server.url, dial_a, strategy, penalty_seconds=30)
    b = replica(kind, redis_server.url, dial_b, strategy, penalty_seconds=30)
    thief, other = make_token(sub="thief"), make_token(sub="other")
    assert b.call(chat_body(), token=thief)[0] == 200
    assert box_keys(redis_server) == []  # reading the box writes nothing

    dial_a.value = 1.0
    status, headers, body = a.call(chat_body(), token=thief)
    assert status == 429 and problem(body)["code"] == "suspicious_usage"
    assert len(box_keys(redis_server)) == 1
    assert 0 < int(redis_server.cli("PTTL", box_keys(redis_server)[0])) <= 30_000

    window = [k for k in redis_server.cli("--scan", "--pattern", "*thief*").split() if "box" not in k]
    before = {k: snapshot(redis_server, k) for k in window}
    calls = dial_b.calls
    status, headers, body = b.call(chat_body(), token=thief, path="/v1/embeddings")
    assert status == 429 and problem(body)["code"] == "suspicious_usage"
    assert 1 <= int(headers["retry-after"]) <= 31
    assert "ratelimit" not in headers  # never disclose quota to a boxed client
    assert dial_b.calls == calls  # refused before the detectors
    assert {k: snapshot(redis_server, k) for k in window} == before  # nothing charged
    assert b.guard.risk.boxed_until("thief", time.time()) is not None  # kept locally now
    assert b.call(chat_body(), token=other)[0] == 200
    a.close()
    b.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_the_shared_box_ends_with_the_penalty(redis_server: RedisServer, kind: str) -> None:
    """The box's window expires with the penalty: afterwards every replica serves the client
    (whose risk has decayed meanwhile)."""
    dial_a, dial_b = Dial(), Dial()
    a = replica(kind, redis_server.url, dial_a, penalty_seconds=1, half_life=0.05)
    b = replica(kind, redis_server.url, dial_b, penalty_seconds=1, half_life=0.05)
    thief = make_token(sub="thief")
    dial_a.value = 1.0
    assert a.call(chat_body(), token=thief)[0] == 429
    dial_a.value = 0.0
    assert b.call(chat_body(), token=thief)[0] == 429
    time.sleep(1.1)
    assert box_keys(redis_server) == []
    assert b.call(chat_body(), token=thief)[0] == 200
    assert a.call(chat_body(), token=thief)[0] == 200
    a.close()
    b.close()


def test_shared_false_keeps_the_box_in_each_replica(redis_server: RedisServer) -> None:
    """With ``shared=False`` nothing is written to Redis and the other replica serves."""
    dial_a, dial_b = Dial(), Dial()
    a = replica("wsgi", redis_server.url, dial_a, shared=False)
    b = replica("wsgi", redis_server.url, dial_b, shared=False)
    thief = make_token(sub="thief")
    dial_a.value = 1.0
    assert a.call(chat_body(), token=thief)[0] == 429
    assert box_keys(redis_server) == []
    assert b.call(chat_body(), token=thief)[0] == 200
    assert a.call(chat_body(), token=thief)[0] == 429  # its own box still holds


def test_memory_storage_has_no_shared_box() -> None:
    """On ``memory://`` the box is the process's own: no window to read per request."""
    guard = Guard(jwt=jwt_config(), policy=Policy(risk=RiskPolicy()))
    assert guard.risk is not None
    from distillguard import Identity

    assert guard.risk.box_check(Identity(client_id="c")) is None


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_outage_never_reads_as_a_box_nor_opens_fail_closed(redis_server: RedisServer, kind: str) -> None:
    """Redis down: under ``local_fallback`` the client is served on local counts (the box read
    there finds nothing), under ``fail_closed`` it still gets 503 ``limiter_unavailable``; the
    replica that blocked the client keeps refusing it from its own box."""
    dial_a = Dial()
    a = replica(kind, redis_server.url, dial_a, penalty_seconds=30)
    fallback = replica(kind, redis_server.url, Dial(), penalty_seconds=30)
    limits = LimitConfig(default="100/minute", storage_uri=redis_server.url, outage="fail_closed")
    closed = Harness(
        kind, Guard(jwt=jwt_config(), limits=limits, detectors=[Dial()], policy=Policy(risk=RiskPolicy()))
    )
    thief, other = make_token(sub="thief"), make_token(sub="other")
    dial_a.value = 1.0
    assert a.call(chat_body(), token=thief)[0] == 429
    redis_server.stop()
    assert fallback.call(chat_body(), token=other)[0] == 200
    status, _, body = closed.call(chat_body(), token=other)
    assert status == 503 and problem(body)["code"] == "limiter_unavailable"
    status, _, body = a.call(chat_body(), token=thief)
    assert status == 429 and problem(body)["code"] == "suspicious_usage"
    for h in (a, fallback, closed):
        h.close()


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_degrade_on_one_replica_degrades_on_every_replica(redis_server: RedisServer, kind: str) -> None:
    """Replica A's detector puts the client at the degrade level; replica B, whose own detector
    sees nothing, takes the client at that level too (and so strips its log probabilities), a
    client A never flagged stays at 0 on B, the level expires with the half-life; with
    ``shared=False`` a replica keeps its own level only."""
    import json as _json

    body = _json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 5}
    ).encode()
    dial_a, dial_b = Dial(), Dial()
    a = replica(kind, redis_server.url, dial_a)
    b = replica(kind, redis_server.url, dial_b)
    thief, other = make_token(sub="thief"), make_token(sub="other")
    dial_a.value = 0.8  # degrade (0.75 <= risk < 0.9)
    assert a.call(body, token=thief)[0] == 200
    decisions: list[Any] = []
    for token in (thief, other):
        assert b.call(body, token=token)[0] == 200
        decisions.append(b.guard.risk.risk(token_sub(token), time.time()))
    assert decisions[0] > 0.74 and decisions[1] == 0.0  # the degrade level (decaying since)
    assert 0 < int(redis_server.cli("PTTL", level_key(redis_server, "thief"))) <= 900_000

    c = replica(kind, redis_server.url, Dial(), shared=False)
    assert c.call(body, token=thief)[0] == 200
    assert c.guard.risk.risk("thief", time.time()) == 0.0
    for h in (a, b, c):
        h.close()


def token_sub(token: str) -> str:
    import jwt as pyjwt

    return str(pyjwt.decode(token, options={"verify_signature": False})["sub"])


def level_key(server: RedisServer, client: str) -> str:
    (key,) = [k for k in server.cli("--scan", "--pattern", f"*level/{client}*").split() if k]
    return key


def test_a_block_on_one_replica_cuts_the_clients_stream_on_another(redis_server: RedisServer) -> None:
    """Replica A streams an answer to the client; replica B blocks one of its other requests
    (the shared box); A's next check reads the box from Redis and ends the stream with the
    ``error`` event, although A never saw the block itself."""
    from distillguard import DistillGuardWSGIMiddleware
    from tests.adapters.test_stream_cut import EVENTS, Generation, open_stream, wsgi_app

    limits = LimitConfig(default="100/minute", storage_uri=redis_server.url)
    policy = Policy(risk=RiskPolicy(penalty_seconds=30), stream_recheck=0.01)
    dial_a, dial_b = Dial(), Dial()
    generation = Generation()
    a = DistillGuardWSGIMiddleware(
        wsgi_app(generation), guard=Guard(jwt=jwt_config(), limits=limits, detectors=[dial_a], policy=policy)
    )
    b = replica("wsgi", redis_server.url, dial_b, penalty_seconds=30)
    thief = make_token(sub="thief")
    result, chunks, out = open_stream(a, thief)
    dial_b.value = 1.0
    assert b.call(chat_body(), token=thief)[0] == 429
    assert a.guard.risk is not None and a.guard.risk.boxed_until("thief", a.guard.clock()) is None
    out += b"".join(chunks)
    result.close()
    last = json.loads(out.rstrip(b"\n").rsplit(b"\n\n", 1)[-1][len(b"data: ") :])
    assert last["error"]["code"] == "suspicious_usage" and 1 <= last["error"]["retry_after"] <= 31
    assert generation.generated < EVENTS and not generation.completed
    b.close()

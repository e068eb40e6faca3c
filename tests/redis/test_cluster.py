"""Everything the guard keeps in Redis, on a real Redis Cluster (three masters on loopback):
exact windows across replicas whatever node a client's keys hash to, token reconciliation and
refunds, the shared penalty box, the shared detector state, and a failed node taking the outage
path (never a 500 or a hang) until it is back."""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillguard import Guard, LimitConfig, Policy
from distillguard.detectors.defaults import default_detectors
from distillguard.limiting import LimitRule
from distillguard.limiting.concurrency import slot_key
from distillguard.risk import RiskPolicy
from tests.helpers import Dial, jwt_config, make_token
from tests.limiting.apps import Harness, chat_body, wsgi_call
from tests.redis.test_shared_detector_state import (
    SWEEP,
    Clock,
    WatchedCampaign,
    campaign_flag,
    replicas,
    serve,
)
from tests.servers import RedisCluster, require_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter"]


@pytest.fixture(scope="module")
def cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    require_redis()
    cluster = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(cluster_module: RedisCluster) -> Iterator[RedisCluster]:
    """A healthy, empty cluster (a node a previous test stopped is started again)."""
    stopped = [node for node in cluster_module.nodes if not node.ping()]
    for node in stopped:
        node.start()
    if stopped:
        cluster_module.wait_ok()
    cluster_module.flush()
    yield cluster_module


def replica(kind: str, url: str, closing: list[Harness], **options: Any) -> Harness:
    """One replica: its own guard (limits on ``url``; options for :class:`LimitConfig`, plus
    ``detectors`` and ``policy``)."""
    detectors = options.pop("detectors", [])
    policy = options.pop("policy", Policy())
    options.setdefault("default", "5/minute")
    limits = LimitConfig(storage_uri=url, **options)
    harness = Harness(kind, Guard(jwt=jwt_config(), limits=limits, detectors=detectors, policy=policy))
    closing.append(harness)
    return harness


def value(cluster: RedisCluster, key: str) -> str:
    """A window's count, read on the node that holds it (a moving window is a list)."""
    node = cluster.owner(key)
    kind = node.cli("TYPE", key).strip()
    return node.cli("LLEN" if kind == "list" else "GET", key).strip()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_replicas_share_exact_windows_on_every_node(
    cluster: RedisCluster, kind: str, strategy: str, closing: list[Harness]
) -> None:
    """Two replicas taking turns admit each of 24 clients exactly its limit, whichever of the
    three nodes its keys hash to; the RateLimit fields count down across replicas, the refusal
    carries ``Retry-After``, and no storage error occurs."""
    a, b = (replica(kind, cluster.url, closing, default="3/minute", strategy=strategy) for _ in range(2))
    for i in range(24):
        # names that differ in one character hash to nearby slots (CRC16): spread them
        token = make_token(sub=hashlib.sha256(str(i).encode()).hexdigest()[:12])
        answers = [(a, b)[n % 2].call(chat_body(), token=token) for n in range(4)]
        assert [status for status, _, _ in answers] == [200, 200, 200, 429], i
        assert [headers["ratelimit"].split(";")[1] for _, headers, _ in answers[:3]] == ["r=2", "r=1", "r=0"]
        assert int(answers[3][1]["retry-after"]) >= 1
    owners = {cluster.owner(key).port for key in cluster.stored_keys()}
    assert len(owners) == 3  # the clients' windows are spread over every node
    assert a.guard.limiter_stats.storage_errors == 0 and b.guard.limiter_stats.storage_errors == 0
    assert a.guard.limiter_stats.local_fallback == 0 and b.guard.limiter_stats.local_fallback == 0


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_token_windows_reconcile_exactly_on_a_cluster(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """A token window on the cluster holds exactly the usage: the estimate is corrected down
    and up after the response, and a refused estimate leaves nothing behind."""
    rules = [LimitRule(name="tok", limits="1000/minute", unit="tokens")]
    h = replica(kind, cluster.url, closing, default="100/minute", rules=rules)
    key = "dg:LIMITER/{client-1}/r/tok/client-1/1000/1/minute"
    h.call(chat_body(), headers={"x-usage": "10,20"})  # estimate 110, used 30
    assert value(cluster, key) == "30"
    h.call(chat_body(), headers={"x-usage": "10,400"})  # estimate 110, used 410
    assert value(cluster, key) == "440"
    assert h.call(chat_body(max_tokens=900))[0] == 429  # estimate 910 > 560 left
    assert value(cluster, key) == "440"
    assert h.guard.limiter_stats.storage_errors == 0


def test_a_refused_request_is_refunded_on_a_cluster(cluster: RedisCluster, closing: list[Harness]) -> None:
    """A request refused by its route's window is refunded from the client's moving window
    (which may sit on another node): that window holds exactly the admitted requests."""
    rules = [LimitRule(name="route", limits="2/minute", routes=["/v1/chat/completions"])]
    h = replica("wsgi", cluster.url, closing, strategy="moving-window", rules=rules)
    assert [h.call()[0] for _ in range(4)] == [200, 200, 429, 429]
    key = "dg:LIMITER/{client-1}/c/default/client-1/5/1/minute"
    assert cluster.owner(key).cli("LLEN", key).strip() == "2"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_the_penalty_box_holds_on_every_replica_of_a_cluster(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """Replica A blocks a client; replica B, whose own detector sees nothing, refuses it with
    ``suspicious_usage`` and ``Retry-After`` and runs no detector; other clients pass."""
    dial_a, dial_b = Dial(), Dial()
    policy = Policy(risk=RiskPolicy(penalty_seconds=30))
    a = replica(kind, cluster.url, closing, default="100/minute", detectors=[dial_a], policy=policy)
    b = replica(kind, cluster.url, closing, default="100/minute", detectors=[dial_b], policy=policy)
    thief, other = make_token(sub="thief"), make_token(sub="other")
    assert b.call(chat_body(), token=thief)[0] == 200
    dial_a.value = 1.0
    assert a.call(chat_body(), token=thief)[0] == 429
    boxes = [key for key in cluster.stored_keys() if "box" in key]
    assert len(boxes) == 1 and 0 < int(cluster.owner(boxes[0]).cli("PTTL", boxes[0])) <= 30_000
    calls = dial_b.calls
    status, headers, body = b.call(chat_body(), token=thief)
    assert status == 429 and json.loads(body)["code"] == "suspicious_usage"
    assert 1 <= int(headers["retry-after"]) <= 31
    assert dial_b.calls == calls
    assert b.call(chat_body(), token=other)[0] == 200
    assert b.guard.limiter_stats.storage_errors == 0


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_release_reaches_every_replica_of_a_cluster(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """The client's box, level, state and release count share its hash tag (one node): an
    operator's release clears the box there and both replicas admit the client again."""
    from tests.redis.test_release import Persistent

    policy = Policy(risk=RiskPolicy(penalty_seconds=30))
    a = replica(kind, cluster.url, closing, default="100/minute", detectors=[Persistent()], policy=policy)
    b = replica(kind, cluster.url, closing, default="100/minute", detectors=[Dial()], policy=policy)
    thief = make_token(sub="thief")
    assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
    assert b.call(chat_body(), token=thief)[0] == 429
    operator = Guard(
        jwt=jwt_config(), limits=LimitConfig(default="100/minute", storage_uri=cluster.url), policy=policy
    )
    assert operator.release("thief") is True
    assert not [key for key in cluster.stored_keys() if "box" in key]
    assert b.call(chat_body(), token=thief)[0] == 200
    assert [a.call(chat_body(), token=thief)[0] for _ in range(3)] == [200, 200, 429]
    assert a.guard.limiter_stats.storage_errors == 0 and b.guard.limiter_stats.storage_errors == 0


def test_a_failing_record_fails_the_exchange_after_the_others_are_joined(cluster: RedisCluster) -> None:
    """Under ASGI a cluster's joins run concurrently: one that fails (a record key holding
    something else) fails the exchange, once every other join has been made."""
    import asyncio

    from distillguard.limiting.effects import JoinRecord

    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="100/minute", storage_uri=cluster.url))
    joins = tuple(JoinRecord(f"u:{g}#0000000{g}", "7", 1.0e9, 100.0, 4) for g in range(1, 4))
    broken = "dg:distillguard-record/u:2#00000002"
    cluster.owner(broken).cli("SET", broken, "not a record")

    async def exchange() -> str:
        limiter = guard.async_performer().limiter
        try:
            await limiter.join_records(joins)
        except Exception as exc:
            return type(exc).__name__
        finally:
            await limiter.aclose()
        return "joined"

    assert asyncio.run(exchange()) == "StorageError"
    stored = cluster.stored_keys()
    assert "dg:distillguard-record/u:1#00000001" in stored and "dg:distillguard-record/u:3#00000003" in stored


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_detector_state_is_shared_on_a_cluster(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """Three replicas serving a template sweep round robin refuse it at the same request as one
    replica; each replica reads the state the others wrote (on its own round trip: a cluster's
    windows are charged through ``limits``), and nothing fails."""

    def replicas(count: int, clock: Clock) -> list[Harness]:
        out = []
        for _ in range(count):
            guard = Guard(
                jwt=jwt_config(),
                limits=LimitConfig(default="100000/minute", storage_uri=cluster.url),
                detectors=default_detectors(),
                clock=clock,
            )
            out.append(Harness(kind, guard))
        closing.extend(out)
        return out

    clock = Clock()
    alone = serve(replicas(1, clock), clock, SWEEP)
    assert 429 in alone
    cluster.flush()
    three = replicas(3, clock)
    assert serve(three, clock, SWEEP) == alone
    share = three[(len(SWEEP) - 1) % 3].guard.state_share
    assert share is not None and share.failed == 0 and share.rejected == 0
    assert share.loaded == len(SWEEP) // 3
    assert any(key.startswith("dg:distillguard-state/") for key in cluster.stored_keys())


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_campaign_records_are_shared_on_a_cluster(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """The campaign detector's family records, each on the node that holds its key, are shared:
    three replicas taking turns flag a template campaign within a round of one replica."""
    clock = Clock()
    found = {}
    for label, count in (("one", 1), ("three", 3)):
        cluster.flush()
        harnesses = replicas(
            kind, cluster.url, clock, count, shared=True, detectors=lambda: [WatchedCampaign()]
        )
        closing.extend(harnesses)
        found[label] = campaign_flag(harnesses, clock, accounts=10, requests=120)
        if label == "three":
            assert any(key.startswith("dg:distillguard-record/") for key in cluster.stored_keys())
    assert found["one"] is not None and found["three"] is not None
    assert found["three"] <= found["one"] + 3


# redis-py's async cluster client drops the nodes it builds during a failed re-initialisation
# with a connection still open (nothing references them any more, so nothing can close them): the
# garbage collector closes them, with a ResourceWarning. The test collects them before it ends.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_failed_node_takes_the_outage_path_until_it_is_back(
    cluster: RedisCluster, kind: str, closing: list[Harness]
) -> None:
    """The node holding a client's window stops: under ``local_fallback`` the client is served
    on local counts, promptly; under ``fail_closed`` it gets 503 ``limiter_unavailable``.
    Once the node is back (empty), the windows count on the cluster again."""
    served = replica(kind, cluster.url, closing, default="3/minute", detectors=default_detectors())
    closed = replica(kind, cluster.url, closing, default="3/minute", outage="fail_closed")
    token = make_token(sub="alice")
    assert served.call(chat_body(), token=token)[0] == 200
    key = "dg:LIMITER/{alice}/c/default/alice/3/1/minute"
    node = cluster.owner(key)
    node.stop()
    for _ in range(3):
        started = time.monotonic()
        assert served.call(chat_body(), token=token)[0] == 200
        assert time.monotonic() - started < 2.0
    assert served.call(chat_body(), token=token)[0] == 429  # the local counts hold the limit
    status, _, body = closed.call(chat_body(), token=token)
    assert status == 503 and json.loads(body)["code"] == "limiter_unavailable"
    assert served.guard.limiter_stats.local_fallback >= 4
    node.start()
    cluster.wait_ok()
    deadline = time.monotonic() + 10
    while closed.call(chat_body(), token=make_token(sub="bob"))[0] != 200:  # the breaker closes
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert closed.call(chat_body(), token=token)[0] == 200
    assert value(cluster, key) == "1"
    for harness in closing:
        harness.close()
    gc.collect()


def _scripts_run(cluster: RedisCluster) -> int:
    """How many scripts the nodes ran since their statistics were reset (``EVALSHA`` and
    ``EVAL`` calls: each is one round trip of a client)."""
    total = 0
    for node in cluster.nodes:
        for line in node.cli("INFO", "commandstats").splitlines():
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
                total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_one_script_per_request_on_a_cluster_with_the_clusters_clock(
    cluster: RedisCluster, kind: str, closing: list[Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's keys carry its hash tag, so its two moving windows are charged by one script
    on one node (one round trip per request, as on a single Redis), stamped with Redis' own
    clock: a replica whose clock runs 61 s ahead (past the window) still counts in the same
    window, and the limit holds exactly."""
    import time as time_module

    a = replica(kind, cluster.url, closing, default="3/minute;100/day", strategy="moving-window")
    b = replica(kind, cluster.url, closing, default="3/minute;100/day", strategy="moving-window")
    token = make_token()
    assert a.call(chat_body(), token=token)[0] == 200  # connections and script loading
    for node in cluster.nodes:
        node.cli("CONFIG", "RESETSTAT")
    assert [a.call(chat_body(), token=token)[0] for _ in range(2)] == [200, 200]
    assert _scripts_run(cluster) == 2
    real = time_module.time
    monkeypatch.setattr(time_module, "time", lambda: real() + 61)
    assert b.call(chat_body(), token=token)[0] == 429
    monkeypatch.setattr(time_module, "time", real)
    keys = [k for k in cluster.stored_keys() if "{client-1}" in k]
    assert len({cluster.owner(k).port for k in keys}) == 1 and len(keys) == 2


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_the_concurrency_cap_holds_across_replicas_on_a_cluster(
    cluster: RedisCluster, closing: list[Harness], kind: str
) -> None:
    """The in-flight leases of a client sit in one key on the node of its hash tag: a stream
    held on one replica makes another refuse the client; once it is over the lease is gone and
    requests are admitted one after another (each lease given back)."""
    key = "dg:" + slot_key("client-1")
    holder = replica("wsgi", cluster.url, closing, default="100/minute", concurrency=1)
    other = replica(kind, cluster.url, closing, default="100/minute", concurrency=1)
    release = threading.Event()
    status, _, stream = wsgi_call(
        holder.mw,
        token=make_token(),
        headers={"x-mode": "hold"},
        extra={"test.release": release},
        consume=False,
    )
    assert status == 200 and cluster.owner(key).cli("ZCARD", key).strip() == "1"
    assert other.call()[0] == 429
    release.set()
    b"".join(stream)
    stream.close()
    assert cluster.owner(key).cli("ZCARD", key).strip() == "0"
    assert [other.call()[0] for _ in range(3)] == [200, 200, 200]

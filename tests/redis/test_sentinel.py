"""The guard on Redis Sentinel (a master, a replica and a real Sentinel on loopback): replicas
share exact windows and the detectors' state through the master the Sentinel names, and when
the master fails the requests take the outage path (promptly, never a 500) until the Sentinel
has promoted the replica; then the windows count on the new master, from where the old one
left them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillguard import Guard, LimitConfig
from distillguard.detectors.defaults import default_detectors
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.redis.test_shared_detector_state import SWEEP, Clock, serve
from tests.servers import RedisSentinel, require_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    require_redis()
    deployment = RedisSentinel(tmp_path)
    deployment.start()
    yield deployment
    deployment.stop()


def replica(kind: str, url: str, closing: list[Harness], **options: Any) -> Harness:
    """One replica's guard, its limits on ``url`` (``detectors`` and ``clock`` go to the guard,
    the other options to :class:`LimitConfig`)."""
    extra = {key: options.pop(key) for key in ("detectors", "clock") if key in options}
    options.setdefault("default", "3/minute")
    harness = Harness(kind, Guard(jwt=jwt_config(), limits=LimitConfig(storage_uri=url, **options), **extra))
    closing.append(harness)
    return harness


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_replicas_share_exact_windows_through_the_sentinel(
    sentinel: RedisSentinel, kind: str, strategy: str, closing: list[Harness]
) -> None:
    """Two replicas taking turns admit each client exactly its limit, on the master the Sentinel
    names (and replicated to its replica), with no storage error."""
    a, b = (replica(kind, sentinel.url, closing, strategy=strategy) for _ in range(2))
    for i in range(5):
        token = make_token(sub=f"user-{i}")
        answers = [(a, b)[n % 2].call(chat_body(), token=token) for n in range(4)]
        assert [status for status, _, _ in answers] == [200, 200, 200, 429], answers[0]
        assert [headers["ratelimit"].split(";")[1] for _, headers, _ in answers[:3]] == ["r=2", "r=1", "r=0"]
    on_master = sorted(sentinel.master.cli("--scan", "--pattern", "dg:*").split())
    assert all(any(f"/user-{i}/" in key for key in on_master) for i in range(5))
    deadline = time.monotonic() + 5
    while sorted(sentinel.replica.cli("--scan", "--pattern", "dg:*").split()) != on_master:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert a.guard.limiter_stats.storage_errors == 0 and b.guard.limiter_stats.storage_errors == 0


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_detector_state_is_shared_through_the_sentinel(
    sentinel: RedisSentinel, kind: str, closing: list[Harness]
) -> None:
    """Three replicas serving a template sweep round robin refuse it at the same request as one."""
    clock = Clock()
    options: dict[str, Any] = {"default": "100000/minute", "clock": clock}
    alone = serve(
        [replica(kind, sentinel.url, closing, detectors=default_detectors(), **options)], clock, SWEEP
    )
    assert 429 in alone
    sentinel.master.flush()
    three = [replica(kind, sentinel.url, closing, detectors=default_detectors(), **options) for _ in range(3)]
    assert serve(three, clock, SWEEP) == alone
    share = three[0].guard.state_share
    assert share is not None and share.failed == 0 and share.loaded > 0


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_failed_master_is_replaced_by_its_replica(
    sentinel: RedisSentinel, kind: str, closing: list[Harness]
) -> None:
    """The master stops: every request is still answered, promptly, on the local counts; once
    the Sentinel has promoted the replica, the windows count there again, continuing from the
    counts the replica had copied from the old master."""
    h = replica(kind, sentinel.url, closing, default="10/minute", detectors=default_detectors())
    token = make_token(sub="alice")
    assert [h.call(chat_body(), token=token)[0] for _ in range(2)] == [200, 200]
    key = "dg:LIMITER/c/default/alice/10/1/minute"
    deadline = time.monotonic() + 5
    while sentinel.replica.cli("LLEN", key).strip() != "2":  # replicated
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sentinel.master.stop()
    started = time.monotonic()
    n = 0
    while sentinel.master_port() != sentinel.replica.port:  # one new client per request
        began = time.monotonic()
        n += 1
        assert h.call(chat_body(), token=make_token(sub=f"during-{n}"))[0] == 200
        assert time.monotonic() - began < 2.0
        # about 2 s, but a Sentinel that missed its timer on a loaded machine (CI on two cores)
        # enters TILT mode and takes no action for 30 s
        assert time.monotonic() - started < 75
        time.sleep(0.1)
    assert h.guard.limiter_stats.local_fallback >= 1
    sentinel.wait_failover(timeout=75)
    deadline = time.monotonic() + 15
    while True:  # the breaker lets a probe through, which finds the new master
        n += 1
        errors = h.guard.limiter_stats.storage_errors
        assert h.call(chat_body(), token=make_token(sub=f"after-{n}"))[0] == 200
        stored = sentinel.replica.cli("EXISTS", f"dg:LIMITER/c/default/after-{n}/10/1/minute").strip() == "1"
        if stored and h.guard.limiter_stats.storage_errors == errors:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert h.call(chat_body(), token=token)[0] == 200
    assert sentinel.replica.cli("LLEN", key).strip() == "3"  # 2 before the failover, then this one

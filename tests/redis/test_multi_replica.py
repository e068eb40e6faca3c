"""Two uvicorn processes sharing one real redis-server hold one client to exactly its limit, a
client blocked by one of them is refused by the other (the shared penalty box), a sweep spread
over both is caught as soon as one replica alone catches it (the shared detector state), and so
is a campaign spread over accounts and replicas (the shared family records)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_token
from tests.servers import RedisServer, free_port, wait_until_serving

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]


def _start(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.redis.replica_app:app",
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def replicas(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Two uvicorn replicas of ``replica_app`` on ``redis_server`` (limit from the param)."""
    limit, strategy, *extra = request.param
    env = dict(os.environ, DG_REDIS_URL=redis_server.url, DG_LIMIT=limit, DG_STRATEGY=strategy)
    env.update(extra[0] if extra else {})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    ports = [free_port(), free_port()]
    processes = [_start(port, env) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_until_serving(port, process, timeout=30)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "replicas",
    [("10/minute", "moving-window"), ("10/minute", "fixed-window"), ("10/minute", "sliding-window-counter")],
    indirect=True,
    ids=["moving", "fixed", "sliding"],
)
def test_one_client_over_two_replicas_gets_exactly_its_limit(replicas: list[int]) -> None:
    """A client spreading 30 requests over both replicas is admitted exactly 10 times (all three
    strategies count on Redis; within one window there is no strategy slack), and both replicas
    admitted some of them."""
    headers = {"authorization": f"Bearer {make_token(sub='spread')}", "content-type": "application/json"}
    admitted: dict[str, int] = {}
    statuses: list[int] = []
    with httpx.Client(timeout=5) as client:
        for i in range(30):
            port = replicas[i % 2]
            response = client.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", headers=headers, content=b"{}"
            )
            statuses.append(response.status_code)
            if response.status_code == 200:
                replica = response.headers["x-replica"]
                admitted[replica] = admitted.get(replica, 0) + 1
            else:
                assert response.status_code == 429
                assert int(response.headers["retry-after"]) >= 1
    assert statuses.count(200) == 10
    assert len(admitted) == 2 and sum(admitted.values()) == 10


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [("100/minute", "moving-window")], indirect=True, ids=["moving"])
def test_a_client_blocked_by_one_replica_is_refused_by_the_other(replicas: list[int]) -> None:
    """Replica 1 blocks a client whose prompt trips its detector; replica 2, which never saw
    that prompt, refuses the client's next harmless request (``suspicious_usage``, a
    ``Retry-After`` within the penalty) and still serves everyone else."""

    def post(port: int, subject: str, prompt: str) -> httpx.Response:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
        headers = {"authorization": f"Bearer {make_token(sub=subject)}"}
        return client.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=headers, json=body)

    first, second = replicas
    with httpx.Client(timeout=5) as client:
        assert post(second, "thief", "hello").status_code == 200
        blocked = post(first, "thief", "TRIPWIRE please")
        assert blocked.status_code == 429 and blocked.json()["code"] == "suspicious_usage"
        refused = post(second, "thief", "hello again")
        assert refused.status_code == 429 and refused.json()["code"] == "suspicious_usage"
        assert 1 <= int(refused.headers["retry-after"]) <= 61
        served = post(second, "someone-else", "hello")
        assert served.status_code == 200


SWEEP = [
    f"Translate the following sentence into French: the {c} {n} number {i} is near the station"
    for i, (c, n) in enumerate(
        zip(
            ["red", "blue", "green", "old", "new"] * 12,
            ["car", "house", "tree", "river", "book", "lamp"] * 10,
            strict=True,
        )
    )
]


def first_refusal(
    ports: list[int], sweep: list[str], subjects: tuple[str, ...] = ("sweeper",), agent: str | None = None
) -> int | None:
    """Send ``sweep`` to the replicas in turn, from ``subjects`` in turn: the 0-based index of the
    first 429 (refused as ``suspicious_usage``)."""
    tokens = [make_token(sub=subject) for subject in subjects]
    with httpx.Client(timeout=5) as client:
        for i, prompt in enumerate(sweep):
            body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
            headers = {"authorization": f"Bearer {tokens[i % len(tokens)]}"}
            if agent is not None:
                headers["user-agent"] = agent
            url = f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions"
            response = client.post(url, json=body, headers=headers)
            if response.status_code == 429:
                assert response.json()["code"] == "suspicious_usage"
                return i
            assert response.status_code == 200
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    "replicas",
    [("1000/minute", "moving-window", {"DG_DETECTORS": "default"})],
    indirect=True,
    ids=["shared"],
)
def test_a_sweep_spread_over_two_replicas_is_caught_as_by_one(replicas: list[int]) -> None:
    """A template sweep sent to two replicas in turn is refused within the requests one replica
    needs (about a dozen: ``tests/redis/test_shared_detector_state.py``); each replica saw half."""
    caught = first_refusal(replicas, SWEEP)
    assert caught is not None and caught <= 14


@pytest.mark.slow
@pytest.mark.parametrize(
    "replicas",
    [("1000/minute", "moving-window", {"DG_DETECTORS": "default", "DG_SHARED": "0"})],
    indirect=True,
    ids=["per-process"],
)
def test_without_sharing_each_replica_sees_half_of_the_sweep(replicas: list[int]) -> None:
    """The same sweep with the detector state per process gets much further: each replica needs
    its own dozen requests."""
    caught = first_refusal(replicas, SWEEP)
    assert caught is None or caught >= 18


@pytest.mark.slow
@pytest.mark.parametrize(
    "replicas",
    [
        ("1000/minute", "moving-window", {"DG_DETECTORS": "campaign"}),
        ("1000/minute", "moving-window", {"DG_DETECTORS": "campaign", "DG_SHARED": "0"}),
    ],
    indirect=True,
    ids=["shared", "per-process"],
)
def test_a_campaign_spread_over_two_replicas(replicas: list[int], request: pytest.FixtureRequest) -> None:
    """Ten accounts sending one template in turn, to two replicas in turn: each account always
    reaches the same replica (as behind a sticky balancer), so each replica serves five members.
    With the records shared, the campaign is refused within a round of the requests one replica
    needs (18, ``tests/redis/test_shared_detector_state.py``; 18 here); with everything per
    process neither replica ever sees the eight members a campaign needs."""
    accounts = tuple(f"acct-{a}" for a in range(10))
    caught = first_refusal(replicas, SWEEP, accounts, agent="bot/1.0")
    if request.node.callspec.id == "shared":
        assert caught is not None and caught < 18 + 3
    else:
        assert caught is None or caught >= 18 + 10

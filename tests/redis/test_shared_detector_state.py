"""Detector state shared through Redis: replicas that take turns serving one client decide as
one replica would; an up-to-date replica reads nothing; the stored state is JSON with a time to
live and no prompt text; what does not fit is ignored; an outage leaves each replica its own
state; memory storage and ``shared_state=False`` share nothing."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from distillguard import DetectorResult, DistillGuardMiddleware, Guard, LimitConfig, Observation, Policy
from distillguard.detectors._sharing import encode_state
from distillguard.detectors._state import LRUStates
from distillguard.detectors.campaign import CampaignDetector
from distillguard.detectors.defaults import default_detectors
from distillguard.detectors.near_duplicate import NearDuplicateDetector
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, LLMApp, asgi_call, chat_body
from tests.servers import RedisServer
from tests.telemetry.conftest import metric_points

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

T0 = time.time()
SUBJECT = "sweeper"
NOUNS = ("car", "house", "tree", "river", "book", "lamp", "road")
COLOURS = ("red", "blue", "green", "old", "new")
# a template sweep: one instruction, its slots filled in turn (caught within a few dozen queries)
SWEEP = [
    f"Translate the following sentence into French: the {COLOURS[i % 5]} {NOUNS[i % 7]} number {i} "
    "is near the station"
    for i in range(60)
]


class Clock:
    """One clock for every replica (a request every 1.7 s from ``T0``)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def replica(
    url: str,
    clock: Clock,
    *,
    shared: bool = True,
    detectors: Any = None,
    strategy: str = "moving-window",
    default: str = "100000/minute",
    **options: Any,
) -> Guard:
    """One replica's guard: the limits on ``url``, the default detectors unless ``detectors``
    (a factory) says otherwise."""
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default=default, storage_uri=url, strategy=strategy),
        detectors=detectors() if detectors is not None else default_detectors(),
        policy=Policy(shared_state=shared),
        clock=clock,
        **options,
    )


def replicas(kind: str, url: str, clock: Clock, count: int, **options: Any) -> list[Harness]:
    """``count`` replicas behind ``kind`` adapters (options as for :func:`replica`)."""
    return [Harness(kind, replica(url, clock, **options)) for _ in range(count)]


def serve(harnesses: list[Harness], clock: Clock, prompts: list[str]) -> list[int]:
    """Send ``prompts`` in turn to the replicas (round robin); the statuses."""
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    clock.now = T0
    statuses = []
    for i, prompt in enumerate(prompts):
        clock.now += 1.7
        statuses.append(harnesses[i % len(harnesses)].call(chat_body(prompt), token=token)[0])
    return statuses


def states(harness: Harness) -> dict[str, Any]:
    """Each detector's state of the client, encoded."""
    out = {}
    for detector in harness.guard.detectors:
        state = detector.states.peek(SUBJECT)
        if state is not None:
            out[detector.name] = encode_state(state)
    return out


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_replicas_taking_turns_decide_as_one_replica(
    redis_server: RedisServer, kind: str, strategy: str, closing: list[Harness]
) -> None:
    """Three replicas serving a template sweep round robin refuse it at the same request as one
    replica serving all of it, and end with the same detector state; without sharing, each sees
    a third of the sweep, and the sweep gets much further. The state is read in the windows'
    script (moving window) or on its own (the sliding window counter goes through ``limits``)."""
    clock = Clock()
    one = replicas(kind, redis_server.url, clock, 1, strategy=strategy)
    closing.extend(one)
    alone = serve(one, clock, SWEEP)
    assert 429 in alone, "the sweep is caught by one replica"
    redis_server.flush()
    three = replicas(kind, redis_server.url, clock, 3, strategy=strategy)
    closing.extend(three)
    assert serve(three, clock, SWEEP) == alone
    last = three[(len(SWEEP) - 1) % 3]
    assert states(last) == states(one[0])
    share = last.guard.state_share
    assert share is not None and share.failed == 0 and share.rejected == 0
    assert share.loaded == len(SWEEP) // 3  # each request after another replica's one
    redis_server.flush()
    apart = replicas(kind, redis_server.url, clock, 3, shared=False, strategy=strategy)
    closing.extend(apart)
    assert all(h.guard.state_share is None for h in apart)
    separate = serve(apart, clock, SWEEP)
    assert separate.index(429) >= alone.index(429) + 10


def evalsha_calls(server: RedisServer) -> int:
    match = re.search(r"cmdstat_evalsha:calls=(\d+)", server.cli("INFO", "commandstats"))
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_the_state_is_read_in_the_windows_round_trip(
    redis_server: RedisServer, kind: str, strategy: str, closing: list[Harness]
) -> None:
    """With the windows charged by the script, sharing the state adds one script call per
    request (the write): the read rides with the windows."""
    clock = Clock()
    counts = {}
    for shared in (False, True):
        (solo,) = replicas(kind, redis_server.url, clock, 1, shared=shared, strategy=strategy)
        closing.append(solo)
        serve([solo], clock, SWEEP[:2])  # scripts loaded, connections open
        redis_server.cli("CONFIG", "RESETSTAT")
        serve([solo], clock, SWEEP[2:12])
        counts[shared] = evalsha_calls(redis_server)
    assert counts[True] - counts[False] == 10  # one write per request, no read of its own


def test_requests_served_at_once_by_two_replicas_lose_nothing(redis_server: RedisServer) -> None:
    """Two replicas on one event loop serve one client's requests in concurrent pairs: both
    read the same state, and the second write finds the first's. That replica takes the stored
    state, scores its request again and writes: every query reaches the shared windows."""
    clock = Clock()
    guards = [replica(redis_server.url, clock) for _ in range(2)]
    apps = [DistillGuardMiddleware(LLMApp(), guard=guard) for guard in guards]
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    pairs = 20

    async def run() -> list[int]:
        statuses: list[int] = []
        for i in range(pairs):
            clock.now = T0 + 1.7 * i
            answers = await asyncio.gather(
                *(asgi_call(app, chat_body(SWEEP[2 * i + k]), token=token) for k, app in enumerate(apps))
            )
            statuses.extend(status for status, _, _ in answers)
        for app in apps:
            await app._perform.limiter.aclose()
        return statuses

    loop = asyncio.new_event_loop()
    try:
        statuses = loop.run_until_complete(run())
    finally:
        loop.close()
    assert set(statuses) <= {200, 429}
    shares = [guard.state_share for guard in guards]
    assert all(share is not None and share.failed == 0 for share in shares)
    assert sum(share.retried for share in shares if share is not None) >= pairs // 2
    key = next(k for k in redis_server.cli("--scan", "--pattern", "*distillguard-state*").split())
    stored = json.loads(redis_server.cli("HGET", key, "d"))
    assert stored["word_salad"][1][1] == 2 * pairs  # ``n``: every text query of the client


class Meddler:
    """A sharing plugin that, while it scores, has "another replica" write the client's state
    (a new stamp, no detector part) once ``armed``: every write of the request then conflicts."""

    name = "meddler"
    shares_state = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.key: str | None = None
        self.calls = 0
        self.states: LRUStates[Any] = LRUStates(lambda: _Count())

    def score(self, observation: Observation) -> DetectorResult:
        self.calls += 1
        self.states.get(observation.identity.client_id).n += 1
        if self.key is not None:
            self.server.cli("HSET", self.key, "w", f"elsewhere-{self.calls}", "d", "{}")
        return DetectorResult(self.name, 0.0)


class _Count:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def test_a_second_conflict_in_a_row_keeps_both_states(
    redis_server: RedisServer, closing: list[Harness]
) -> None:
    """When another replica writes again while the request is scored the second time, the
    request is still answered, scored twice at most, and the other replica's state stays."""
    clock = Clock()
    meddler = Meddler(redis_server)
    (solo,) = replicas("wsgi", redis_server.url, clock, 1, detectors=lambda: [meddler])
    closing.append(solo)
    serve([solo], clock, SWEEP[:1])
    meddler.key = next(k for k in redis_server.cli("--scan", "--pattern", "*distillguard-state*").split())
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    assert solo.call(chat_body(SWEEP[1]), token=token)[0] == 200
    share = solo.guard.state_share
    assert share is not None and (share.retried, share.failed, share.saved) == (1, 0, 1)
    assert meddler.calls == 3  # the first request, then this one twice
    assert redis_server.cli("HGET", meddler.key, "w").strip() == "elsewhere-3"


def test_an_up_to_date_replica_reads_nothing(redis_server: RedisServer, closing: list[Harness]) -> None:
    """One replica serving a client alone never decodes a state: the stamp it wrote is the stored
    one, so the script answers nothing. The stored state is JSON of the detectors' numbers and
    rings, with a time to live, and none of the prompt's words."""
    clock = Clock()
    (solo,) = replicas("wsgi", redis_server.url, clock, 1)
    closing.append(solo)
    serve([solo], clock, SWEEP[:10])
    share = solo.guard.state_share
    assert share is not None
    assert (share.loaded, share.saved, share.failed) == (0, 10, 0)
    key = next(k for k in redis_server.cli("--scan", "--pattern", "*distillguard-state*").split())
    assert key.endswith(f"distillguard-state/{SUBJECT}")
    data = redis_server.cli("HGET", key, "d").strip()
    doc = json.loads(data)
    assert set(doc) == set(share.names) - {"prada"}  # prada keeps nothing for text queries
    for word in ("Translate", "French", "station", "river"):
        assert word.lower() not in data.lower()
    ttl = int(redis_server.cli("PTTL", key))
    assert 21_590_000 < ttl <= 21_600_000
    assert redis_server.cli("HGET", key, "w").strip() == solo.guard.state_share.known(SUBJECT)


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        '["a", "list"]',
        '{"near_duplicate": [1, 2]}',  # another layout number
        '{"near_duplicate": "text"}',
        "x*300000",  # written with string.rep: larger than any state is allowed to be
    ],
)
def test_a_state_that_does_not_fit_is_ignored(
    redis_server: RedisServer, stored: str, closing: list[Harness]
) -> None:
    """Whatever the storage holds, the request is served and the replica keeps its own state."""
    clock = Clock()
    (solo,) = replicas("asgi", redis_server.url, clock, 1)
    closing.append(solo)
    serve([solo], clock, SWEEP[:3])
    key = next(k for k in redis_server.cli("--scan", "--pattern", "*distillguard-state*").split())
    if stored == "x*300000":
        redis_server.cli(
            "EVAL", "redis.call('hset', KEYS[1], 'w', 'other', 'd', string.rep('x', 300000))", "1", key
        )
    else:
        redis_server.cli("HSET", key, "w", "someone-else", "d", stored)
    before = states(solo)["near_duplicate"]
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    assert solo.call(chat_body(SWEEP[3]), token=token)[0] == 200
    share = solo.guard.state_share
    assert share is not None and share.rejected >= 1
    after = states(solo)["near_duplicate"]
    assert after[2] == before[2] + 1  # ``n``: the replica's own state went on
    assert redis_server.cli("HGET", key, "w").strip() == share.known(SUBJECT)  # and replaced it
    assert "near_duplicate" in json.loads(redis_server.cli("HGET", key, "d"))


def test_wrong_types_in_a_detector_part_are_ignored(
    redis_server: RedisServer, closing: list[Harness]
) -> None:
    """A part with the right layout but a value of another type is refused for that detector
    only; the other detectors take theirs."""
    clock = Clock()
    a, b = replicas("wsgi", redis_server.url, clock, 2)
    closing.extend((a, b))
    serve([a], clock, SWEEP[:5])
    key = next(k for k in redis_server.cli("--scan", "--pattern", "*distillguard-state*").split())
    doc = json.loads(redis_server.cli("HGET", key, "d").strip())
    doc["near_duplicate"][1][2] = "five"  # ``n`` as a string
    redis_server.cli("HSET", key, "d", json.dumps(doc))
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    assert b.call(chat_body(SWEEP[5]), token=token)[0] == 200
    got = states(b)
    assert got["near_duplicate"][2] == 1  # its own, fresh
    assert got["word_salad"][1] == 6  # five from the storage, and this one
    assert b.guard.state_share is not None and b.guard.state_share.rejected == 1


def test_other_settings_keep_their_own_state(redis_server: RedisServer, closing: list[Harness]) -> None:
    """Replicas whose detector has other settings do not exchange that detector's state."""
    clock = Clock()
    (a,) = replicas("wsgi", redis_server.url, clock, 1, detectors=lambda: [NearDuplicateDetector(window=64)])
    (b,) = replicas("wsgi", redis_server.url, clock, 1, detectors=lambda: [NearDuplicateDetector(window=32)])
    closing.extend((a, b))
    serve([a, b], clock, SWEEP[:6])
    assert states(a)["near_duplicate"][2] == 3
    assert states(b)["near_duplicate"][2] == 3
    assert a.guard.state_share is not None and a.guard.state_share.rejected >= 2


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_outage_leaves_each_replica_its_own_state(
    redis_server: RedisServer, kind: str, closing: list[Harness]
) -> None:
    """With Redis down, requests are served (the outage policy decides the limits) and each
    replica scores with its own state; once Redis is back, the state is shared again."""
    clock = Clock()
    a, b = replicas(kind, redis_server.url, clock, 2)
    closing.extend((a, b))
    serve([a, b], clock, SWEEP[:4])
    assert states(b)["word_salad"][1] == 4
    redis_server.stop()
    token = make_token(sub=SUBJECT, now=T0, exp=int(T0) + 3600)
    for harness in (a, b):
        assert harness.call(chat_body(SWEEP[4]), token=token)[0] == 200
    assert states(a)["word_salad"][1] == 4  # its own 3 and this one
    assert states(b)["word_salad"][1] == 5
    share = a.guard.state_share
    assert share is not None and share.failed >= 1
    redis_server.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the circuit breaker lets a request through again
        b.call(chat_body(SWEEP[5]), token=token)
        if b.guard.state_share is not None and b.guard.state_share.saved > 3:
            break
        time.sleep(0.2)
    before = states(b)["word_salad"][1]
    a.call(chat_body(SWEEP[6]), token=token)
    assert states(a)["word_salad"][1] == before + 1  # a took b's state


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_without_windows_the_state_is_read_on_its_own(
    redis_server: RedisServer, kind: str, closing: list[Harness]
) -> None:
    """With no window to charge (``default=""``), the state is read in a round trip of its own,
    and still shared."""
    clock = Clock()
    harnesses = replicas(kind, redis_server.url, clock, 2, default="")
    closing.extend(harnesses)
    serve(harnesses, clock, SWEEP[:6])
    assert states(harnesses[1])["word_salad"][1] == 6
    share = harnesses[1].guard.state_share
    assert share is not None and share.loaded == 3 and share.failed == 0


def test_the_exchanges_are_metrics(redis_server: RedisServer) -> None:
    """``distillguard.detector.state.exchanges`` counts reads, writes, refusals and failures by
    outcome; a guard that shares nothing reports no point."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    clock = Clock()
    a, b = replicas("wsgi", redis_server.url, clock, 2, meter_provider=provider)
    serve([a, b], clock, SWEEP[:6])  # b reads a's state 3 times, a reads b's twice
    points = metric_points(reader)["distillguard.detector.state.exchanges"]
    got = {attrs["distillguard.state.outcome"]: point.value for attrs, point in points}
    assert got == {
        "loaded": 5,
        "saved": 6,
        "rejected": 0,
        "oversized": 0,
        "failed": 0,
        "retried": 0,
        "records": 0,
        "records_failed": 0,
    }
    provider.shutdown()


def test_memory_storage_shares_nothing() -> None:
    guard = Guard(jwt=jwt_config(), detectors=default_detectors())
    assert guard.state_share is None


def test_every_built_in_detector_shares(redis_server: RedisServer) -> None:
    """The default detectors and the campaign detector (its per-account windows) share."""
    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(storage_uri=redis_server.url),
        detectors=[*default_detectors(), "campaign"],
    )
    assert guard.state_share is not None
    assert set(guard.state_share.names) == {d.name for d in default_detectors()} | {"campaign"}


class WatchedCampaign(CampaignDetector):
    """The campaign detector, keeping every score it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[float] = []

    def score(self, observation: Observation) -> DetectorResult:
        result = super().score(observation)
        self.scores.append(result.score)
        return result


def campaign_flag(harnesses: list[Harness], clock: Clock, accounts: int, requests: int) -> int | None:
    """A template campaign over ``accounts`` accounts (one user agent), taking turns, sent round
    robin to the replicas: the 1-based index of the first request the campaign detector scores
    at the flag level, or ``None``."""
    tokens = [make_token(sub=f"acct-{a}", now=T0, exp=int(T0) + 3600) for a in range(accounts)]
    for i in range(requests):
        clock.now = T0 + 1.7 * (i + 1)
        harness = harnesses[i % len(harnesses)]
        detector = harness.guard.detectors[0]
        assert isinstance(detector, WatchedCampaign)
        harness.call(
            chat_body(SWEEP[i % len(SWEEP)]), token=tokens[i % accounts], headers={"user-agent": "bot/1.0"}
        )
        if detector.scores[-1] >= 0.5:
            return i + 1
    return None


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_campaign_accounts_share_their_windows_across_replicas(
    redis_server: RedisServer, kind: str, closing: list[Harness]
) -> None:
    """The campaign detector's per-account windows and its family records are shared: with three
    replicas taking turns, each account counts as concentrated on the template as soon as its
    whole stream says so, and each replica knows the members the others served, so the campaign
    is flagged within a round of when one replica serving everything flags it (a replica takes
    the others' members after it scored its own request: one request late at most), and far
    sooner than with each replica's own state."""
    clock = Clock()
    found = {}
    for label, count, shared in (("one", 1, True), ("shared", 3, True), ("apart", 3, False)):
        redis_server.flush()
        harnesses = replicas(
            kind, redis_server.url, clock, count, shared=shared, detectors=lambda: [WatchedCampaign()]
        )
        closing.extend(harnesses)
        found[label] = campaign_flag(harnesses, clock, accounts=10, requests=120)
        shares = [h.guard.state_share for h in harnesses]
        if shared:  # every replica exchanged family visits, and none failed
            assert all(s is not None and s.records > 0 and s.records_failed == 0 for s in shares)
    assert found["one"] is not None and found["shared"] is not None
    assert found["shared"] <= found["one"] + 3
    assert found["apart"] is None or found["apart"] >= found["shared"] + 10

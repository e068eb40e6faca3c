"""Records shared across clients and replicas (the campaign detector's family members) on a real
redis-server: what the join script keeps, what the guard sends after scoring, and that a failing
exchange never costs a request."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Generator
from typing import Any

import pytest

from distillguard import Guard, LimitConfig, Policy
from distillguard.detectors.campaign import CampaignDetector
from distillguard.flow import _join_records
from distillguard.limiting.effects import JoinRecord, JoinRecords
from tests.detectors.test_campaign import Event, observe
from tests.detectors.traffic import benign_prompts, template_sweep
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body
from tests.servers import RedisServer, SlowLink, free_port

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

T0 = 1_800_000_000.0


def guard(url: str, **policy: Any) -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000/minute", storage_uri=url),
        detectors=["campaign"],
        policy=Policy(**policy),
    )


def join(member: str, seen: float, *, horizon: float = 100.0, cap: int = 4) -> JoinRecord:
    return JoinRecord("u:1234abcd#00c0ffee", member, seen, horizon, cap)


def performer(g: Guard, kind: str) -> tuple[Any, Any]:
    """``g``'s sync performer, or its async one run to completion on a loop of its own; and a
    closer."""
    if kind == "sync":
        return g.sync_performer(), lambda: None
    loop = asyncio.new_event_loop()
    aperform = g.async_performer()

    def close() -> None:
        loop.run_until_complete(aperform.limiter.aclose())
        loop.close()

    return (lambda effect: loop.run_until_complete(aperform(effect))), close


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_record_keeps_the_latest_visit_of_its_recent_members(redis_server: RedisServer, kind: str) -> None:
    """Each member keeps its latest time; members not seen within the horizon of the latest
    visit are dropped, and so are all but the ``cap`` most recent; the record expires a horizon
    after its last visit."""
    perform, close = performer(guard(redis_server.url), kind)
    assert perform(JoinRecords((join("1", T0), join("2", T0 + 10)))) == [
        [("1", T0)],
        [("1", T0), ("2", T0 + 10)],
    ]
    assert perform(JoinRecords((join("1", T0 - 50),))) == [[("1", T0), ("2", T0 + 10)]]  # an older visit
    answer = perform(JoinRecords((join("3", T0 + 105.5),)))  # member 1 is now past the horizon
    assert answer == [[("2", T0 + 10), ("3", T0 + 105.5)]]
    for m in ("4", "5", "6"):
        answer = perform(JoinRecords((join(m, T0 + 106 + int(m)),)))
    assert answer == [[("3", T0 + 105.5), ("4", T0 + 110), ("5", T0 + 111), ("6", T0 + 112)]]
    key = "dg:distillguard-record/u:1234abcd#00c0ffee"
    assert 90_000 < int(redis_server.cli("PTTL", key).strip()) <= 100_000
    close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_joins_of_a_request_take_one_round_trip(redis_server: RedisServer, kind: str) -> None:
    """All the joins of one exchange go out together (a pipeline): through a link that adds
    0.15 s to every round trip, nine joins (three families in three groups, the most one
    request sends) take about one delay, not nine; each record still answers in order."""
    delay = 0.15
    link = SlowLink(redis_server.port, delay)
    perform, close = performer(guard(link.url), kind)
    try:
        perform(JoinRecords((join("0", T0),)))  # connects (and its handshake's round trips)
        joins = tuple(
            JoinRecord(f"{group}:1234abcd#{fam:08x}", "7", T0 + 1, 100.0, 4)
            for group in ("t", "n", "u")
            for fam in (1, 2, 3)
        )
        started = time.monotonic()
        answer = perform(JoinRecords(joins))
        elapsed = time.monotonic() - started
        assert answer == [[("7", T0 + 1)]] * 9
        assert elapsed < 3 * delay, elapsed  # one call per join would take 9 x 0.15 s
        again = perform(JoinRecords((join("8", T0 + 2), join("9", T0 + 3))))
        assert again == [[("0", T0), ("8", T0 + 2)], [("0", T0), ("8", T0 + 2), ("9", T0 + 3)]]
    finally:
        close()
        link.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_flushed_script_cache_costs_no_join(redis_server: RedisServer, kind: str) -> None:
    """After ``SCRIPT FLUSH`` (or a restart) the pipelined calls find no script: the joins are
    made again one by one, which loads it, and the answer is the same as with it loaded."""
    perform, close = performer(guard(redis_server.url), kind)
    try:
        assert perform(JoinRecords((join("1", T0),))) == [[("1", T0)]]
        redis_server.cli("SCRIPT", "FLUSH")
        answer = perform(JoinRecords((join("2", T0 + 1), join("3", T0 + 2))))
        assert answer == [[("1", T0), ("2", T0 + 1)], [("1", T0), ("2", T0 + 1), ("3", T0 + 2)]]
        assert perform(JoinRecords((join("2", T0 + 1),))) == answer[1:]  # loaded again: idempotent
    finally:
        close()


def test_memory_storage_shares_no_record() -> None:
    """On the memory storage there is nothing to share: the guard sends no join."""
    g = Guard(jwt=jwt_config(), limits=LimitConfig(default="10/minute"), detectors=["campaign"])
    assert g.record_sharers == ()
    assert g.sync_performer()(JoinRecords((join("1", T0),))) is None


def test_only_a_shared_storage_with_shared_state_exchanges_records(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The campaign detector shares its records when the state is shared (and the guard says so
    at startup), not with ``Policy(shared_state=False)``."""
    with caplog.at_level("INFO", logger="distillguard"):
        assert [d.name for d in guard(redis_server.url).record_sharers] == ["campaign"]
    assert "records across clients shared through the limit storage: ('campaign',)" in caplog.text
    assert guard(redis_server.url, shared_state=False).record_sharers == ()


def _drive(flow: Generator[Any, object, tuple[str, ...]], answer: Any) -> tuple[tuple[str, ...], list[Any]]:
    """Run ``flow``, answering every effect with ``answer`` (or what it returns for the effect)."""
    sent = []
    try:
        effect = next(flow)
        while True:
            sent.append(effect)
            effect = flow.send(answer(effect) if callable(answer) else answer)
    except StopIteration as stop:
        return stop.value, sent


class Exploding(CampaignDetector):
    """A record-sharing detector whose exchange raises."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self._outbox = [join("1", T0)]

    def shared_records(self) -> list[JoinRecord]:
        if self.where == "shared_records":
            raise RuntimeError("boom")
        return super().shared_records()

    def absorb_records(self, joins: Any, answers: Any) -> None:
        raise RuntimeError("boom")


def test_a_failing_exchange_is_an_error_not_a_lost_request() -> None:
    """A detector that raises while exchanging records, or a storage that does not answer, is
    named in the decision's errors; the pipeline goes on."""
    for where in ("shared_records", "absorb_records"):
        failed, _ = _drive(_join_records((Exploding(where),), None), lambda effect: [[("1", T0)]])
        assert failed == ("campaign",)
    quiet = CampaignDetector()
    quiet._outbox = [join("1", T0)]
    failed, sent = _drive(_join_records((quiet,), None), ConnectionError("down"))
    assert failed == ("campaign",) and len(sent) == 1
    failed, sent = _drive(_join_records((CampaignDetector(),), None), None)
    assert failed == () and sent == []  # nothing joined: nothing sent


def test_absorbed_members_count_and_garbage_is_skipped() -> None:
    """A replica takes the members the storage holds for a family record it joined (the ones
    other replicas served), skipping entries that are not a member id and a finite time."""
    det = CampaignDetector(min_accounts=2)
    key = "u:1234abcd#00c0ffee"
    record = det.families.get(key)
    det.active.arrive(("u:1234abcd",), T0)
    record.ids[0], record.seen[0] = 7, T0
    members = [
        ("7", T0),
        ("8", T0 + 1),
        ("9", T0 + 2),
        ("x", T0),
        ("0", T0),
        (str(2**40), T0),
        ("10", float("nan")),
    ]
    det.absorb_records([JoinRecord(key, "7", T0 + 2, det.horizon, det.max_members)], [members])
    assert sorted(i for i in record.ids if i) == [7, 8, 9]
    assert record.accounts == 3


def _exchange(det: CampaignDetector, perform: Any) -> None:
    """What the guard does once a request is scored: send the joins, hand back the answers."""
    joins = det.shared_records()
    if joins:
        det.absorb_records(joins, perform(JoinRecords(tuple(joins))))


@pytest.mark.parametrize("routing", ["round_robin", "sticky"])
def test_the_null_counts_the_whole_group_however_requests_are_routed(
    redis_server: RedisServer, routing: str
) -> None:
    """Three replicas share family records but count active accounts each on their own. Behind a
    round-robin balancer every replica sees every account; behind a sticky one (by client
    address) each sees a third. Either way the number of active accounts a replica's null
    counts for the family's group stays that of one replica serving everything (within a factor
    of 1.5), so sticky routing does not make a family look three times rarer than it is. (The
    family's own base rate comes from each replica's background sketch.)"""
    g = guard(redis_server.url)
    perform = g.sync_performer()
    sweep = list(template_sweep(random.Random(3), 400))
    own = [list(benign_prompts(random.Random(a), 10)) for a in range(40)]
    events = []
    for i in range(400):
        account = i % 40  # 40 active accounts of one user agent, 10 of them on one template
        text = sweep[i] if account < 10 else own[account][i // 40]
        events.append(Event(T0 + 2.0 * i, f"acct-{account}", text, f"198.51.{account}.7", "bot/1.0"))
    one = CampaignDetector()
    replicas = [CampaignDetector() for _ in range(3)]
    for d in replicas:
        d.shared_records()  # the guard asks from the first request on
    for i, event in enumerate(events):
        one.score(observe(event))
        account = int(event.client.split("-")[1])
        det = replicas[i % 3 if routing == "round_robin" else account % 3]
        det.score(observe(event))
        _exchange(det, perform)
    key = max(one.families._states, key=lambda k: one.families._states[k].accounts)
    fam = int(key[-8:], 16)

    def active(det: CampaignDetector) -> float:
        record = det.families.peek(key)
        assert record is not None and record.accounts == 10  # every member, whoever served it
        return record.expected / (det.null.rate(fam) * det.dispersion)

    alone = active(one)
    assert alone > 30  # about the 40 accounts of the group
    for det in replicas:
        assert alone / 1.5 <= active(det) <= alone * 1.5, (active(det), alone)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_storage_that_is_down_costs_no_request(kind: str) -> None:
    """With the shared storage unreachable, a campaign's members are served (the outage policy
    applies to the windows) and the records stay this replica's own: no request fails."""
    g = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000/minute", storage_uri=f"redis://127.0.0.1:{free_port()}"),
        detectors=["campaign"],
    )
    assert g.record_sharers
    harness = Harness(kind, g)
    try:
        sweep = list(template_sweep(random.Random(5), 40))
        tokens = [make_token(sub=f"acct-{a}") for a in range(10)]
        statuses = [
            harness.call(chat_body(text), token=tokens[i % 10], headers={"user-agent": "bot/1.0"})[0]
            for i, text in enumerate(sweep)
        ]
    finally:
        harness.close()
    assert statuses == [200] * 40
    (detector,) = g.detectors
    assert any(record.accounts >= 8 for record in detector.families._states.values())

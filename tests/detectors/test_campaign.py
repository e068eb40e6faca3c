"""The multi-account campaign detector: campaigns of accounts that each stay under every
per-account threshold are caught early, benign users sharing common phrasing are not, every
member is acted on, and memory and per-request cost stay bounded."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillguard import Action, Decision, Guard, Policy
from distillguard._drivers import drive
from distillguard.detectors import Observation, load_detectors
from distillguard.detectors._state import deep_sizeof
from distillguard.detectors._text import COMMON_WORDS
from distillguard.detectors.campaign import CampaignDetector, benign_member_rate, network_prefix
from distillguard.detectors.defaults import default_detectors
from distillguard.errors import ConfigurationError
from distillguard.identity import Identity
from distillguard.query import Query
from distillguard.request import GuardRequest
from distillguard.risk import RiskEngine, RiskPolicy
from tests.detectors.traffic import benign_prompts, chat_body, query, template_sweep
from tests.helpers import make_token

TENANT = "https://login.example.com/"
BROWSERS = (
    "Mozilla/5.0 (X11; Linux) Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
    "MyApp/2.1 iOS",
)
START = 1_700_000_000.0


def chatterbot_questions() -> list[str]:
    """The first line of every English chatterbot-corpus conversation (~2,000 questions)."""
    import chatterbot_corpus

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out: list[str] = []
    for path in sorted(root.glob("*.yml")):
        data = yaml.safe_load(path.read_text("utf-8"))
        for conversation in data.get("conversations", []):
            if conversation and isinstance(conversation[0], str):
                out.append(conversation[0])
    return out


SHARED_PHRASING = (
    "What is the difference between {a} and {b}?",
    "how do I get started with {a}?",
    "What is {a} and why does it matter?",
    "How do I choose between {a} and {b} for a beginner?",
    "what is the best way to learn {a} in a month",
)
SUBJECTS = [
    "Python",
    "Rust",
    "Java",
    "baking",
    "gardening",
    "yoga",
    "chess",
    "guitar",
    "piano",
    "photography",
    "sourdough",
    "knitting",
    "investing",
    "budgeting",
    "climbing",
    "running",
    "cycling",
    "swimming",
    "painting",
    "pottery",
    "calligraphy",
    "astronomy",
    "statistics",
    "calculus",
    "Spanish",
    "German",
    "Japanese",
    "meditation",
    "woodworking",
    "sailing",
]


@dataclass(frozen=True)
class Event:
    """One request of the simulated traffic."""

    ts: float
    client: str
    text: str
    address: str
    agent: str
    tenant: str | None = TENANT


def observe(event: Event, q: Query | None = None) -> Observation:
    """The observation of ``event`` (its chat query unless ``q`` is given)."""
    return Observation(
        identity=Identity(client_id=event.client, tenant=event.tenant),
        timestamp=event.ts,
        method="POST",
        route="/v1/chat/completions",
        query=q if q is not None else query(event.text),
        client_address=event.address,
        user_agent=event.agent,
    )


def benign_users(rng: random.Random, users: int, per_user: int, questions: list[str]) -> Iterator[Event]:
    """Varied benign users of one tenant over a day: chatterbot questions, the generator's
    conversational users, and common shared phrasings ("what is ...", "how do I ..."), from a
    few office /24s and home addresses, with browser user agents."""
    for u in range(users):
        kind = u % 3
        if kind == 0:
            prompts = [rng.choice(questions) for _ in range(per_user)]
        elif kind == 1:
            prompts = list(benign_prompts(random.Random(rng.random()), per_user))
        else:
            prompts = []
            for _ in range(per_user):
                if rng.random() < 0.4:
                    a, b = rng.sample(SUBJECTS, 2)
                    prompts.append(rng.choice(SHARED_PHRASING).format(a=a, b=b))
                else:
                    prompts.append(rng.choice(questions))
        office = rng.random() < 0.5
        address = (
            f"10.0.{rng.randrange(3)}.{rng.randrange(1, 250)}"
            if office
            else f"81.{u % 200}.{u % 7}.{u % 250 + 1}"
        )
        agent = rng.choice(BROWSERS)
        ts = START + rng.uniform(0, 80_000)
        for text in prompts:
            yield Event(ts, f"user-{u}", text, address, agent)
            ts += rng.expovariate(1 / 120)


def campaign(
    rng: random.Random, accounts: int, total: int, *, spread_networks: bool, spread_agents: bool, start: float
) -> list[Event]:
    """A template sweep of ``total`` queries spread evenly over ``accounts`` accounts of the
    tenant, in random account order, a few seconds apart."""
    order = [a for a in range(accounts) for _ in range(total // accounts)]
    rng.shuffle(order)
    events = []
    ts = start
    for a, text in zip(order, template_sweep(rng, len(order)), strict=True):
        address = f"172.{16 + a % 16}.{a}.{a + 7}" if spread_networks else f"203.0.113.{a + 1}"
        agent = f"client-lib/{a}.{a % 3}" if spread_agents else "python-httpx/0.27.0"
        events.append(Event(ts, f"acct-{a}", text, address, agent))
        ts += rng.uniform(1.0, 10.0)
    return events


@dataclass
class Outcome:
    """What a run of the pipeline saw for the campaign accounts."""

    campaign_served: int  # campaign queries seen
    first_campaign_flag: int | None  # 1-based index among campaign queries of the first flag
    first_other_flag: int | None  # same, for any other detector scoring a campaign account >= 0.5
    flagged_members: set[str]
    benign_flagged: set[str]
    benign_campaign_scores: list[float]


def run(events: list[Event], *, defaults: bool = True, **options: Any) -> Outcome:
    """Feed the events, in time order, through the default detectors (unless ``defaults`` is
    false) plus a campaign detector with ``options``, and one risk engine."""
    campaign_detector = CampaignDetector(**options)
    detectors = [*default_detectors(), campaign_detector] if defaults else [campaign_detector]
    engine = RiskEngine(RiskPolicy())
    out = Outcome(0, None, None, set(), set(), [])
    for event in sorted(events, key=lambda e: e.ts):
        obs = observe(event)
        results = [d.score(obs) for d in detectors]
        verdict = engine.assess(event.client, results, event.ts)
        campaign_score = results[-1].score
        if event.client.startswith("acct-"):
            out.campaign_served += 1
            if campaign_score >= 0.5 and out.first_campaign_flag is None:
                out.first_campaign_flag = out.campaign_served
            if any(r.score >= 0.5 for r in results[:-1]) and out.first_other_flag is None:
                out.first_other_flag = out.campaign_served
            if verdict.action is not Action.ALLOW and campaign_score >= 0.5:
                out.flagged_members.add(event.client)
        else:
            out.benign_campaign_scores.append(campaign_score)
            if campaign_score >= 0.5:
                out.benign_flagged.add(event.client)
    return out


@pytest.fixture(scope="module")
def background() -> list[Event]:
    """600 benign users of the tenant, 12 requests each, over a day."""
    return list(benign_users(random.Random(11), 600, 12, chatterbot_questions()))


def test_campaign_of_25_accounts_flagged_within_its_first_100_queries(background: list[Event]) -> None:
    """1,000 template-sweep queries over 25 accounts hidden in a tenant's benign traffic: the
    campaign detector flags it within its first 100 queries, while no per-account detector has
    flagged any of its accounts by then; every account is then acted on and no benign user is
    flagged."""
    attack = campaign(
        random.Random(1), 25, 1000, spread_networks=False, spread_agents=False, start=START + 20_000
    )
    out = run(background + attack)
    assert out.first_campaign_flag is not None and out.first_campaign_flag <= 100, out.first_campaign_flag
    assert out.first_other_flag is None or out.first_other_flag > out.first_campaign_flag
    assert len(out.flagged_members) == 25
    assert not out.benign_flagged


def test_hydra_of_100_accounts_never_seen_by_per_account_detectors(background: list[Event]) -> None:
    """100 accounts of 10 queries each (each far under every per-account threshold: no other
    detector ever scores one of them at the flag level) are flagged within the first 100 of the
    campaign's 1,000 queries."""
    attack = campaign(
        random.Random(2), 100, 1000, spread_networks=False, spread_agents=False, start=START + 30_000
    )
    out = run(background + attack)
    assert out.first_other_flag is None
    assert out.first_campaign_flag is not None and out.first_campaign_flag <= 100, out.first_campaign_flag
    assert len(out.flagged_members) >= 90


def test_campaign_across_networks_and_agents_caught_by_its_tenant(background: list[Event]) -> None:
    """Accounts on 25 different /24 prefixes, each with its own user agent, sharing only the
    tenant, are still grouped and flagged within the first 100 queries."""
    attack = campaign(
        random.Random(3), 25, 1000, spread_networks=True, spread_agents=True, start=START + 40_000
    )
    out = run(background + attack, defaults=False)
    assert out.first_campaign_flag is not None and out.first_campaign_flag <= 100, out.first_campaign_flag
    assert not out.benign_flagged


def test_accounts_sharing_no_group_are_not_linked() -> None:
    """The same sweep from accounts with no shared tenant, prefix or user agent is not a
    campaign of this detector (the grouping is what links accounts)."""
    events = [
        Event(e.ts, e.client, e.text, e.address, e.agent, tenant=f"https://{e.client}.example/")
        for e in campaign(random.Random(4), 25, 300, spread_networks=True, spread_agents=True, start=START)
    ]
    out = run(events, defaults=False)
    assert out.first_campaign_flag is None


def test_benign_shared_phrasing_is_not_flagged() -> None:
    """3,000 benign users of one tenant (chatterbot questions, conversational users, and shared
    "what is ..." / "how do I ..." phrasings) from shared office prefixes and browser agents: no
    request gets any campaign score."""
    events = list(benign_users(random.Random(5), 3000, 10, chatterbot_questions()))
    out = run(events, defaults=False)
    assert out.benign_campaign_scores and max(out.benign_campaign_scores) == 0.0


def _small_world(seed: int) -> list[Event]:
    """200 benign users of the tenant, then a 12-account campaign of 120 queries."""
    rng = random.Random(seed)
    background = [
        Event(START - 5000 + e.ts - START, e.client, e.text, e.address, e.agent)
        for e in benign_users(rng, 200, 6, chatterbot_questions())
    ]
    background.sort(key=lambda e: e.ts)
    return background + campaign(
        rng, 12, 120, spread_networks=False, spread_agents=False, start=START + 80_000
    )


def test_members_are_scored_on_every_request() -> None:
    """Once a campaign is scored, a member's unrelated request carries the campaign's score
    (with its signals), and a non-member's identical request does not."""
    det = CampaignDetector()
    for event in _small_world(6):
        det.score(observe(event))
    member = Event(
        START + 82_000, "acct-3", "what's a good name for a cat?", "203.0.113.4", "python-httpx/0.27.0"
    )
    result = det.score(observe(member))
    assert result.score >= 0.5 and result.reasons == ("shared_template_family",)
    assert result.signals["accounts"] == 12 and result.signals["concentration"] > 0.9
    assert result.signals["surprise"] > 6 and result.signals["expected"] < 1
    outsider = Event(
        START + 82_001, "someone", "what's a good name for a cat?", "203.0.113.200", "python-httpx/0.27.0"
    )
    assert det.score(observe(outsider)).score == 0.0


def test_membership_expires_after_the_horizon() -> None:
    """A member's score lapses once neither it nor its campaign has been seen for a horizon."""
    det = CampaignDetector(horizon=3600)
    for event in _small_world(7):
        det.score(observe(event))
    late = Event(START + 90_000, "acct-1", "hello again", "203.0.113.2", "python-httpx/0.27.0")
    assert det.score(observe(late)).score == 0.0


def test_non_text_requests_score_zero() -> None:
    """Classic predict bodies carry no template family: score 0."""
    det = CampaignDetector()
    event = Event(START, "a", "", "203.0.113.1", "x")
    assert det.score(observe(event, Query(kind="vector", vector=(1.0, 2.0)))).score == 0.0


def test_benign_member_rate_measures_the_null() -> None:
    """The null's member rate on varied benign users is within the default p_member, and 1 on
    sweeping accounts."""
    rng = random.Random(8)
    questions = chatterbot_questions()
    benign = [[rng.choice(questions) for _ in range(20)] for _ in range(300)]
    benign += [list(benign_prompts(random.Random(i), 20)) for i in range(300)]
    sweeps = [list(template_sweep(random.Random(i), 3)) for i in range(20)]
    assert benign_member_rate(benign) <= CampaignDetector().p_member
    assert benign_member_rate(sweeps) == 1.0
    assert benign_member_rate([]) == 0.0


def test_network_prefix() -> None:
    """/24 for IPv4 (mapped IPv6 included), /48 for IPv6 in any notation, ports ignored, None
    for anything else."""
    assert network_prefix("203.0.113.77") == "203.0.113.0/24"
    assert network_prefix("::ffff:203.0.113.77") == "203.0.113.0/24"
    assert network_prefix("2001:db8:abcd:12::1") == "2001:db8:abcd::/48"
    assert network_prefix("[2001:db8:abcd:ffff:1:2:3:4]") == "2001:db8:abcd::/48"
    assert network_prefix("203.0.113.77:51234") == "203.0.113.0/24"
    assert network_prefix("[2001:db8:abcd::1]:443") == "2001:db8:abcd::/48"
    assert network_prefix("unix:/tmp/sock") is None and network_prefix(None) is None


def test_configuration_is_validated() -> None:
    """A tiny reference, a sketch width that is not a power of two, or min_accounts above the
    member cap fail at construction."""
    with pytest.raises(ConfigurationError):
        CampaignDetector(reference=["what is this thing about"] * 10)
    with pytest.raises(ConfigurationError):
        CampaignDetector(sketch_width=1000)
    with pytest.raises(ConfigurationError):
        CampaignDetector(min_accounts=100, max_members=64)


def test_loads_by_entry_point_and_documents_itself() -> None:
    """``campaign`` is registered in the detector group and its module documents signal,
    anchor, cost and limits."""
    import distillguard.detectors.campaign as module

    (det,) = load_detectors({"campaign": {"min_accounts": 10}})
    assert isinstance(det, CampaignDetector) and det.min_accounts == 10
    for section in ("**Signal.**", "**Anchor.**", "**Cost.**", "**Limits.**"):
        assert section in (module.__doc__ or "")


_COMMON = sorted(COMMON_WORDS)


def _templated(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct templates of six common words around one slot."""
    return [
        " ".join(rng.sample(_COMMON, 3)) + " {} " + " ".join(rng.sample(_COMMON, 3)) for _ in range(count)
    ]


@pytest.mark.slow
def test_memory_is_bounded_under_100k_accounts() -> None:
    """100,000 distinct accounts on 100 template families from shared groups (every fourth
    account concentrated on its family): accounts, family records, groups and members stay
    within their caps, every drop is counted, and the detector's whole footprint stays under a
    fixed budget."""
    rng = random.Random(9)
    templates = _templated(rng, 100)
    det = CampaignDetector(max_accounts=10_000, max_families=512, max_members=16, max_groups=64)
    for i in range(100_000):
        template = templates[i % len(templates)]
        identity = Identity(client_id=f"acct-{i}", tenant=f"tenant-{i % 97}")
        for k in range(1 if i % 4 else 2):
            obs = Observation(
                identity=identity,
                timestamp=START + i,
                method="POST",
                route="/v1/completions",
                query=Query(kind="completion", text=template.format(f"slotword{chr(97 + k)}{i}")),
                client_address=f"198.{i % 53}.{i % 7}.9",
                user_agent="bot",
            )
            det.score(obs)
    assert len(det.states) == 10_000 and det.states.evictions == 90_000
    assert len(det.accounts) == 10_000 and det.accounts.evictions == 90_000
    assert len(det.families) == 512 and det.families.evictions > 10_000
    assert len(det.groups) == 64 and det.groups.evictions > 0
    assert det.member_evictions > 0
    window, account = det.states.peek("acct-99996"), det.accounts.peek("acct-99996")
    assert window is not None and account is not None and account.member
    shared = {id(key) for key in (*account.groups, *account.member)}  # interned, shared by every member
    assert deep_sizeof(window) + deep_sizeof(account, shared) <= 768
    size = deep_sizeof(det)
    assert size < 10_000 * 900 + 512 * 1000 + 64 * 400 + 300_000, size


def _pool(seed: int, n: int) -> list[Query]:
    rng = random.Random(seed)
    texts = list(benign_prompts(rng, n // 2)) + list(template_sweep(rng, n - n // 2))
    rng.shuffle(texts)
    return [query(t) for t in texts]


def _cost(det: CampaignDetector, obs: list[Observation]) -> float:
    start = time.perf_counter()
    for o in obs:
        det.score(o)
    return (time.perf_counter() - start) / len(obs)


@pytest.mark.slow
def test_cost_per_request_does_not_grow_with_history() -> None:
    """The same requests of the same 50 accounts cost the same after 100,000 earlier requests
    from 5,000 other accounts (campaign families at their member cap, hundreds of groups) as
    after 10 (median of interleaved repeats; ratio within 1.5)."""
    pool = _pool(11, 400)
    agent = "python-httpx/0.27.0"

    def observations(start: float, prefix: str, accounts: int, queries: list[Query]) -> list[Observation]:
        return [
            Observation(
                identity=Identity(client_id=f"{prefix}-{i % accounts}", tenant=TENANT),
                timestamp=start + i,
                method="POST",
                route="/v1/chat/completions",
                query=q,
                client_address=f"203.0.{i % accounts % 200}.{i % 250 + 1}",
                user_agent=agent,
            )
            for i, q in enumerate(queries)
        ]

    old, young = CampaignDetector(), CampaignDetector()
    for o in observations(START, "acct", 5000, [pool[i % len(pool)] for i in range(100_000)]):
        old.score(o)
    assert max(f.accounts for f in old.families._states.values()) == old.max_members
    warm = observations(START + 150_000, "probe", 50, _pool(12, 10))
    for det in (old, young):
        for o in warm:
            det.score(o)
    short: list[float] = []
    long: list[float] = []
    for r in range(9):
        batch = observations(START + 200_000 + r * 1000, "probe", 50, _pool(100 + r, 300))
        short.append(_cost(young, batch))
        long.append(_cost(old, batch))
    ratio = statistics.median(long) / statistics.median(short)
    assert ratio < 1.5, (statistics.median(short), statistics.median(long))


def test_null_learns_common_families_from_background() -> None:
    """A family that benign accounts use without concentrating on it gets a higher null rate
    than an unseen one, and halving the sketch at its limit keeps the shares."""
    from distillguard.detectors._campaign_null import BenignNull, family_key
    from distillguard.detectors._text import TextFeatures
    from distillguard.detectors.coverage import load_reference

    null = BenignNull(load_reference(), p_member=0.05, min_fixed=4, sketch_limit=2048)
    common = family_key(TextFeatures("What is the difference between Rust and Go?"), 4)
    rare = family_key(
        TextFeatures("Enumerate the invariants of the Klingon grammar in the order of their use"), 4
    )
    assert common and rare and common != rare
    before = null.rate(common)
    for _ in range(1000):
        null.count(common)
    assert null.rate(common) > 10 * before and null.rate(common) > 100 * null.rate(rare)
    share = null.share(common)
    for _ in range(1100):
        null.count(common)
    assert null.background < 2048 and null.share(common) >= share


def test_family_keys_whole_head_and_tail() -> None:
    """A template wrapped around natural questions keeps its tail family while the whole
    skeleton changes with each question's common words; short skeletons have no edges, and
    skeletons under four words no family at all."""
    from distillguard.detectors._text import TextFeatures
    from distillguard.detectors.campaign import EDGE, family_keys

    a = family_keys(TextFeatures("Q: how do I reset my router?\nA: Let's think step by step."), 4, EDGE)
    b = family_keys(TextFeatures("Q: what is the capital of Peru?\nA: Let's think step by step."), 4, EDGE)
    assert a[0] != b[0] and a[1] != b[1] and a[2] == b[2] != 0
    whole, head, tail = family_keys(TextFeatures("what is the capital of Peru"), 4, EDGE)
    assert whole and head == tail == 0
    assert family_keys(TextFeatures("what is it"), 4, EDGE) == (0, 0, 0)
    assert family_keys(TextFeatures("Q: how do I reset my router?\nA: Let's think step by step."), 4)[1:] == (
        0,
        0,
    )


def test_wrapped_question_campaign_is_caught_with_edge_families(background: list[Event]) -> None:
    """With head and tail families on (``edge=4``, ``p_member`` measured with them), 25 accounts
    sending "Q: <a corpus question> A: Let's think step by step." (the question changes the
    whole skeleton every time) are flagged within the campaign's first 100 queries."""
    rng = random.Random(12)
    questions = chatterbot_questions()
    attack = campaign(rng, 25, 1000, spread_networks=True, spread_agents=False, start=START + 25_000)
    attack = [
        Event(e.ts, e.client, f"Q: {rng.choice(questions)}\nA: Let's think step by step.", e.address, e.agent)
        for e in attack
    ]
    out = run(background + attack, defaults=False, edge=4, p_member=0.12)
    assert out.first_campaign_flag is not None and out.first_campaign_flag <= 100, out.first_campaign_flag
    assert not out.benign_flagged
    assert run(background + attack, defaults=False).first_campaign_flag is None  # whole skeletons only


CLASSIFY = "Is the following message positive or negative? Answer with one word."


def test_shared_integration_wrapper_is_not_a_campaign_by_default() -> None:
    """30 accounts of one tenant using the same classification wrapper around their own varied
    messages (a legitimate integration many customers share) are not flagged with the default
    whole-skeleton families; head and tail families (``edge=4``) do flag them, which is why they
    are off by default."""
    rng = random.Random(13)
    questions = chatterbot_questions()
    events = [
        Event(
            START + i * 37.0,
            f"integration-{i % 30}",
            f"{CLASSIFY}\n\n{rng.choice(questions)}",
            f"100.{i % 30}.{i % 7}.5",
            "OpenAI/Python 1.51.0",
        )
        for i in range(300)
    ]
    assert max(run(events, defaults=False).benign_campaign_scores) == 0.0
    assert run(events, defaults=False, edge=4, p_member=0.12).benign_flagged


def test_guard_flags_every_member_from_real_tokens(guard_factory: Callable[..., Guard]) -> None:
    """Through the guard with real JWTs (tenant = issuer), addresses and user agents: after a
    12-account sweep has been recognised, every member's next (unrelated) request is degraded,
    not blocked (the score cap), with the campaign's reason and signals on the decision, and a
    benign user's is allowed."""
    guard = guard_factory(detectors=[CampaignDetector()], policy=Policy(risk=RiskPolicy(throttle=None)))
    perform = guard.sync_performer()
    rng = random.Random(14)
    questions = chatterbot_questions()
    now = time.time()

    def send(sub: str, text: str, address: str, agent: str, ts: float) -> Decision:
        request = GuardRequest(
            method="POST",
            path="/v1/chat/completions",
            authorization=f"Bearer {make_token(sub=sub, now=now)}",
            content_type="application/json",
            body=chat_body(text),
            client_address=address,
            user_agent=agent,
            timestamp=ts,
        )
        decision: Decision = drive(guard.flow(request), perform)
        return decision

    ts = now
    for u in range(60):
        for _ in range(4):
            ts += 1.0
            send(f"user-{u}", rng.choice(questions), f"198.51.100.{u + 1}", BROWSERS[u % 3], ts)
    for text, a in zip(template_sweep(rng, 48), [a for _ in range(4) for a in range(12)], strict=True):
        ts += 1.0
        send(f"acct-{a}", text, f"203.0.113.{a + 1}", "python-httpx/0.27.0", ts)
    for a in range(12):
        ts += 1.0
        decision = send(
            f"acct-{a}", "thanks, that was useful", f"203.0.113.{a + 1}", "python-httpx/0.27.0", ts
        )
        assert decision.action is Action.DEGRADE, (a, decision.action)  # capped at 0.85: not blocked
        assert "campaign:shared_template_family" in decision.reasons
        assert any(r.startswith("signal:campaign.accounts=12") for r in decision.reasons)
    benign = send("user-3", "thanks, that was useful", "198.51.100.4", BROWSERS[0], ts + 1)
    assert benign.action is Action.ALLOW


def test_benchmark_script_measures_detection_null_and_cost() -> None:
    """``benchmarks.campaign`` runs on a small population: a 24-account sweep is flagged early
    with every account, no benign client-day is flagged, and the cost figures are positive."""
    from benchmarks import campaign as bench
    from benchmarks.detection.attacks import campaign_streams
    from benchmarks.detection.benign import benign_population
    from benchmarks.detection.corpora import TUNING_TOPICS, jailbreaks, load_corpus

    corpus = load_corpus("english", TUNING_TOPICS)
    rng = random.Random(15)
    benign = bench.requests(benign_population(corpus, jailbreaks("tuning"), rng, users=120, days=1))
    attack = bench.requests(
        campaign_streams("camp", "template", corpus, random.Random(3), accounts=24, per_day=40, days=1)
    )
    both = sorted(benign + attack, key=lambda r: r.obs.timestamp)
    report = bench.run(both)
    assert report["accounts_flagged"] == 24 and report["benign_flagged_client_days"] == 0
    served = report["served_before_flag"]
    assert isinstance(served, int) and served <= 96, served
    costs = bench.cost(history=500, repeats=1)
    assert set(costs) == {"campaign_after_10_us", "campaign_after_500_us", "default_set_us"}
    assert costs["default_set_us"] > 0

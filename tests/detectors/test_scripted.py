"""The scripted-sweep detector: every account of a coverage campaign (each far under the
coverage detector's 256-query window) is flagged from its 17th request; heavy and
conversational benign users, a fixed prompt on a timer and a sweep with human-like gaps are
not; its state is bounded."""

from __future__ import annotations

import gc
import json
import math
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from benchmarks.detection.attacks import campaign_streams
from benchmarks.detection.benign import chat_user, jailbreak_user, power_user
from benchmarks.detection.scenarios import holdout_corpus, tuning_corpus
from benchmarks.detection.streams import Stream, write_log

from distillguard.cli import main
from distillguard.detectors._state import deep_sizeof
from distillguard.detectors.scripted import ScriptedSweepDetector, has_history
from distillguard.errors import ConfigurationError
from distillguard.query import parse_query
from tests.detectors.traffic import benign_prompts, jailbreak_prompts, observation, query

WINDOW = 16  # the default window: an account is scorable from its 17th request


def _run(streams: list[Stream], det: ScriptedSweepDetector) -> dict[str, int | None]:
    """Every stream through ``det`` in time order; the first flagged request of each client."""
    events = sorted(((ts, s.name, body) for s in streams for ts, _, body in s.events), key=lambda e: e[0])
    counts: dict[str, int] = {}
    first: dict[str, int | None] = {s.name: None for s in streams}
    for ts, name, body in events:
        counts[name] = counts.get(name, 0) + 1
        result = det.score(observation(name, parse_query(json.dumps(body).encode()), ts))
        if result.score >= 0.5 and first[name] is None:
            first[name] = counts[name]
    return first


def _noop(client: Any) -> tuple[str, dict[str, Any]]:
    raise AssertionError("no blended traffic")


@pytest.mark.parametrize("part", ["tuning", "holdout"])
def test_every_account_of_a_coverage_campaign_is_flagged_from_its_17th_request(part: str) -> None:
    """24 accounts sweeping a corpus at 40 requests a day each (one shared cadence, +-10%
    jitter): each account is flagged at request 17, when 8.5% of the campaign has been served,
    long before the coverage detector's 256-query window."""
    rng = random.Random(7)
    corpus = tuning_corpus() if part == "tuning" else holdout_corpus(rng)
    streams = campaign_streams(
        "camp", "coverage", corpus, rng, accounts=24, per_day=40, days=2, benign=_noop, variant=part
    )
    first = _run(streams, ScriptedSweepDetector())
    assert set(first.values()) == {WINDOW + 1}


def test_heavy_and_conversational_benign_users_are_not_flagged() -> None:
    """Heavy users (up to 400 varied requests a day, no history), conversational users and
    jailbreak replayers over 8 days, English and held-out languages: never flagged."""
    rng = random.Random(3)
    streams: list[Stream] = []
    for corpus in (tuning_corpus(), holdout_corpus(random.Random(4))):
        streams += [power_user(f"power-{corpus.name}-{i}", corpus, rng, 8, (60, 400)) for i in range(8)]
        streams += [chat_user(f"chat-{corpus.name}-{i}", corpus, rng, 8) for i in range(40)]
        streams += [
            jailbreak_user(f"jb-{corpus.name}-{i}", corpus, jailbreak_prompts(), rng, 8) for i in range(5)
        ]
    first = _run(streams, ScriptedSweepDetector())
    assert sum(len(s.events) for s in streams) > 20_000
    assert [name for name, q in first.items() if q is not None] == []


def _scores(texts: list[str], gaps: list[float], det: ScriptedSweepDetector, **extra: Any) -> list[float]:
    ts = 1_000_000.0
    out = []
    for text, gap in zip(texts, gaps, strict=True):
        ts += gap
        out.append(det.score(observation("c", query(text, **extra), ts)).score)
    return out


def test_the_cadence_is_what_is_scored() -> None:
    """The same corpus sweep: every 90 s +-5%, it scores the maximum from request 17 (and
    while its window's prompts stay mostly new, over half of the next 184); with exponential
    (Poisson) gaps of the same mean, never flagged."""
    rng = random.Random(5)
    pool = list(dict.fromkeys(tuning_corpus().questions + tuning_corpus().answers))
    rng.shuffle(pool)
    texts = pool[:200]
    regular = [90.0 * rng.uniform(0.95, 1.05) for _ in texts]
    scores = _scores(texts, regular, ScriptedSweepDetector())
    assert max(scores[:WINDOW]) == 0.0
    assert scores[WINDOW] == pytest.approx(0.7)
    assert sum(s >= 0.5 for s in scores[WINDOW:]) > (200 - WINDOW) / 2
    poisson = [rng.expovariate(1 / 90.0) for _ in texts]
    assert max(_scores(texts, poisson, ScriptedSweepDetector())) < 0.5


def test_a_fixed_prompt_on_a_timer_and_a_conversation_are_not_scored() -> None:
    """A health check repeating one prompt every minute has no new words; a regular stream of
    new prompts that carries a conversation history is a conversation."""
    rng = random.Random(6)
    gaps = [60.0] * 100
    assert max(_scores(["ping: are you up?"] * 100, gaps, ScriptedSweepDetector())) == 0.0
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    det = ScriptedSweepDetector()
    texts = list(benign_prompts(rng, 100))
    scores = []
    for i, text in enumerate(texts):
        body = {"model": "m", "messages": [*history, {"role": "user", "content": text}]}
        q = parse_query(json.dumps(body).encode())
        scores.append(det.score(observation("c", q, 60.0 * i)).score)
    assert max(scores) == 0.0


def test_has_history() -> None:
    def q(*roles: str) -> bool:
        body = {"messages": [{"role": r, "content": "x"} for r in roles]}
        return has_history(parse_query(json.dumps(body).encode()))

    assert not q("user")
    assert not q("system", "user")
    assert q("user", "assistant", "user")
    assert q("assistant", "user")
    assert not has_history(parse_query(b'{"prompt": "x"}'))


def test_state_is_bounded_and_settings_are_checked() -> None:
    """At most ~1.1 KB per client whatever the history; a log-gap ring, never a growing list."""
    det = ScriptedSweepDetector(max_clients=10)
    rng = random.Random(8)
    texts = list(benign_prompts(rng, 3000))
    _scores(texts, [30.0] * len(texts), det)
    state = det.states.peek("c")
    assert state is not None and deep_sizeof(state) <= 1100
    assert math.isfinite(state.s1) and state.n == len(texts) - 1
    for i in range(20):
        det.score(observation(f"x{i}", query("hello"), 0.0))
    assert len(det.states) == 10 and det.states.evictions == 11
    with pytest.raises(ConfigurationError):
        ScriptedSweepDetector(spread_low=0.3, spread_high=0.2)
    with pytest.raises(ConfigurationError):
        ScriptedSweepDetector(window=2)


def _bytes_per_client(clients: int, requests: int) -> float:
    detector = ScriptedSweepDetector()
    rng = random.Random(9)
    prompts = [query(p) for p in benign_prompts(rng, 200)]
    detector.score(observation("warm-up", prompts[0], 0.0))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for c in range(clients):
        for r in range(requests):
            detector.score(observation(f"client-{c:05d}", prompts[(c + r) % len(prompts)], 3.0 * r))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / clients


def test_memory_per_client() -> None:
    """A client seen once holds no rings (~180 bytes with the store's entry); one with full
    rings ~660 bytes (measured with tracemalloc)."""
    assert _bytes_per_client(1_000, 1) < 300
    assert _bytes_per_client(100, 40) < 800


def test_sharded_replay_is_exact(tmp_path: Path) -> None:
    """The state is per client, so ``distillguard replay --jobs 2`` reports what one process
    does: a 24-account campaign among conversational users, every account flagged."""
    rng = random.Random(11)
    corpus = tuning_corpus()
    streams = campaign_streams("camp", "coverage", corpus, rng, accounts=24, per_day=40, days=1, benign=_noop)
    streams += [chat_user(f"user-{i}", corpus, rng, 2) for i in range(10)]
    log = tmp_path / "log.jsonl"
    write_log(streams, log)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    args = ["replay", str(log), "--quiet", "--detectors", "scripted_sweep"]
    assert main([*args, "--json", str(one)]) == 0
    assert main([*args, "--json", str(two), "--jobs", "2"]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["clients"] == b["clients"]
    flagged = {c["client"] for c in a["clients"] if c["flagged"]}
    assert flagged == {s.name for s in streams if s.name.startswith("camp-")}


def test_odd_timestamps_never_break_it_nor_look_regular() -> None:
    """Simultaneous, out-of-order, infinite and NaN timestamps are not gaps of a cadence: they
    are skipped (no error, no score), and the gaps around them still count."""
    det = ScriptedSweepDetector()
    rng = random.Random(12)
    texts = list(benign_prompts(rng, 140))
    stamps = [float(i) for i in range(20)] + [math.inf, 5.0, math.nan, -math.inf, 19.0] * 12
    pairs = zip(texts[:80], stamps, strict=True)
    scores = [det.score(observation("c", query(t), ts)).score for t, ts in pairs]
    assert max(scores[:16]) == 0.0 and scores[16] == pytest.approx(0.7)  # 16 one-second gaps
    assert max(scores[20:]) == 0.0
    state = det.states.peek("c")
    assert state is not None and state.last == 19.0 and state.n == 19
    burst = [det.score(observation("b", query(t), 100.0)).score for t in texts[80:]]  # one instant
    assert max(burst) == 0.0 and det.states.peek("b").n == 0  # type: ignore[union-attr]

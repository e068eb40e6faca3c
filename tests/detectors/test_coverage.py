"""The coverage detector: a sweep over a corpus is caught within its documented window (256
queries); varied benign users (chatterbot topic users, jailbreak replayers, other languages,
heavy power users) are not; its state is bounded and its cost flat."""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import pytest
from benchmarks.detection.benign import chat_user, power_user
from benchmarks.detection.corpora import HOLDOUT_LANGUAGES, load_corpus
from benchmarks.detection.scenarios import holdout_corpus, tuning_corpus

from distillguard.detectors._state import deep_sizeof
from distillguard.detectors.coverage import CoverageDetector, load_reference
from distillguard.errors import ConfigurationError
from tests.detectors.traffic import benign_prompts, foreign_prompts, jailbreak_prompts, observation, query

WINDOW = 256  # the documented detection window (min_requests)


def _scores(texts: list[str], det: CoverageDetector | None = None, client: str = "c") -> list[float]:
    det = det or CoverageDetector()
    return [det.score(observation(client, query(t), float(i))).score for i, t in enumerate(texts)]


def _first_flag(scores: list[float]) -> int | None:
    return next((i + 1 for i, s in enumerate(scores) if s >= 0.5), None)


def _sweep(texts: tuple[str, ...], seed: int, n: int) -> list[str]:
    pool = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(pool)
    return pool[:n]


def _prompts(stream_events: list[tuple[float, str, dict[str, object]]]) -> list[str]:
    out = []
    for _, _, body in stream_events:
        messages = body["messages"]
        assert isinstance(messages, list)
        out.append(str(messages[-1]["content"]))
    return out


def test_coverage_catches_a_corpus_sweep_within_its_window() -> None:
    """Each of five shuffled sweeps over the English chatterbot corpus (questions and answers,
    each once) is flagged at query 256 and on at least 80% of the next 100 queries (its score
    falls once the corpus's ~3,000-word vocabulary has been covered)."""
    corpus = tuning_corpus()
    for seed in range(5):
        scores = _scores(_sweep(corpus.questions + corpus.answers, seed, 1200))
        assert _first_flag(scores) == WINDOW
        assert sum(s >= 0.5 for s in scores[WINDOW - 1 : WINDOW + 99]) >= 80


def test_coverage_catches_a_multilingual_sweep() -> None:
    """A sweep over the other-language corpora is flagged within the window too."""
    corpus = holdout_corpus(random.Random(1))
    scores = _scores(_sweep(corpus.questions + corpus.answers, 3, 600))
    assert _first_flag(scores) == WINDOW


def test_coverage_keeps_flagging_a_sweep_past_filter_saturation() -> None:
    """A sweep over a large vocabulary (every corpus of every language plus the jailbreak
    prompts) fills and clears the client's filter several times; its score dips as the filter
    fills, and it is flagged again in every 700 queries."""
    texts: tuple[str, ...] = tuning_corpus().questions + tuning_corpus().answers
    texts += holdout_corpus(random.Random(1)).questions + holdout_corpus(random.Random(1)).answers
    texts += tuple(jailbreak_prompts())
    det = CoverageDetector()
    scores = _scores(_sweep(texts, 4, 3000), det)
    assert _first_flag(scores) == WINDOW
    for start in range(WINDOW, 3000 - 700, 100):
        assert max(scores[start : start + 700]) >= 0.5, start
    state = det.states.peek("c")
    assert state is not None and 0 < state.bits < det.rotate_bits


def test_coverage_catches_a_random_word_sweep() -> None:
    """A sweep of random-letter words (every query new words) is flagged at query 256."""
    rng = random.Random(6)
    letters = "abcdefghijklmnopqrstuvwxyz"
    sweep = [
        " ".join("".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(12)) for _ in range(400)
    ]
    assert _first_flag(_scores(sweep)) == WINDOW


def test_coverage_ignores_chatterbot_topic_users() -> None:
    """Forty conversational users built from chatterbot topics (follow-ups, pasted answers,
    history) never score."""
    corpus = tuning_corpus()
    rng = random.Random(11)
    for u in range(40):
        stream = chat_user(f"u{u}", corpus, rng, days=30)
        assert max(_scores(_prompts(stream.events), client=f"u{u}"), default=0.0) == 0.0


def test_coverage_ignores_heavy_power_users() -> None:
    """Heavy users sending 1,500 varied requests over the whole English corpus or over the
    held-out languages stay below the flag level."""
    rng = random.Random(12)
    for corpus in (tuning_corpus(), holdout_corpus(random.Random(2))):
        for u in range(3):
            stream = power_user(f"p{u}", corpus, rng, days=10, per_day=(300, 400))
            texts = _prompts(stream.events)[:1500]
            assert len(texts) >= 1000
            assert max(_scores(texts)) < 0.5


def test_coverage_ignores_other_language_users() -> None:
    """Users writing Italian, Spanish, German, ... (each replaying their language's corpus with
    repeats, as a user who comes back to their topics) and a synthetic language with a large
    vocabulary do not score."""
    rng = random.Random(13)
    for language in HOLDOUT_LANGUAGES:
        corpus = load_corpus(language)
        pool = list(corpus.questions)
        texts = [rng.choice(pool) for _ in range(600)]
        assert max(_scores(texts)) < 0.5, language
    assert max(_scores(list(foreign_prompts(rng, 800)))) < 0.5


def test_coverage_ignores_jailbreak_replayers() -> None:
    """A client trying the 666 in-the-wild jailbreak prompts with a few questions each (hard
    negatives: abusive, not extraction) does not score."""
    rng = random.Random(14)
    jailbreaks = jailbreak_prompts()
    questions = list(benign_prompts(rng, 50))
    texts = [f"{rng.choice(jailbreaks)}\n\n{rng.choice(questions)}" for _ in range(800)]
    assert max(_scores(texts)) < 0.5


def test_coverage_gives_no_score_before_its_window() -> None:
    """Before 256 text queries nothing scores, whatever the traffic."""
    corpus = tuning_corpus()
    det = CoverageDetector()
    assert max(_scores(_sweep(corpus.questions + corpus.answers, 9, WINDOW - 1), det)) == 0.0


def test_coverage_state_is_bounded() -> None:
    """After 5,000 queries over a large vocabulary the client's state is under 800 bytes."""
    rng = random.Random(15)
    det = CoverageDetector()
    _scores(list(foreign_prompts(rng, 5000)), det)
    state = det.states.peek("c")
    assert state is not None and deep_sizeof(state) <= 800


def _median_cost(det: CoverageDetector, texts: list[str], client: str) -> float:
    queries = [query(t) for t in texts]
    times = []
    for i, q in enumerate(queries):
        obs = observation(client, q, float(i))
        start = time.perf_counter()
        det.score(obs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_coverage_cost_is_flat_in_history_and_prompt_size() -> None:
    """The per-request time after 20,000 earlier queries is within 1.5x of the time after 10, and
    a prompt ten times longer costs under 3x + 20 us (at most 24 words are read; only the shared
    feature pass, included here, is linear in the prompt)."""
    rng = random.Random(16)
    texts = list(foreign_prompts(rng, 400))
    det = CoverageDetector()
    _scores(list(foreign_prompts(rng, 20_000)), det, "old")
    fresh_costs, old_costs = [], []
    for round_ in range(5):  # interleaved, each with a client of 10 queries: load hits both alike
        _scores(texts[:10], det, f"fresh-{round_}")
        fresh_costs.append(_median_cost(det, texts, f"fresh-{round_}"))
        old_costs.append(_median_cost(det, texts, "old"))
    fresh, old = min(fresh_costs), min(old_costs)
    assert old < 1.5 * fresh, (fresh, old)
    long_texts = [" ".join([t] * 10) for t in texts]
    long = min(_median_cost(CoverageDetector(), long_texts, "long") for _ in range(3))
    short = min(_median_cost(CoverageDetector(), texts, "short") for _ in range(3))
    assert long < 3 * short + 20e-6, (short, long)


@pytest.mark.parametrize(
    "options",
    [{"alpha": 0.0}, {"low": 0.5, "high": 0.4}, {"sample": 0}, {"max_score": 1.5}, {"rotate_bits": 5000}],
)
def test_coverage_rejects_bad_options(options: dict[str, float]) -> None:
    """Options out of range are refused at construction."""
    with pytest.raises(ConfigurationError):
        CoverageDetector(**options)  # type: ignore[arg-type]


def test_coverage_reference_sample_is_still_shipped() -> None:
    """The built-in benign prompt sample (used by the campaign detector's null) loads."""
    assert len(load_reference()) >= 200


def test_coverage_ignores_non_text_queries() -> None:
    """A request without text (a numeric predict call) is not scored and creates no state."""
    from distillguard.query import parse_query

    det = CoverageDetector()
    q = parse_query(b'{"inputs": [[0.1, 0.2, 0.3]]}')
    assert det.score(observation("vec", q)).score == 0.0
    assert det.states.peek("vec") is None


def test_coverage_sharded_replay_equals_one_process(tmp_path: Path) -> None:
    """The coverage detector keeps no cross-client state: ``replay --jobs 2`` reports exactly what
    one process does, coverage sweepers flagged included."""
    from benchmarks.detection.attacks import attack_stream
    from benchmarks.detection.streams import write_log

    from distillguard.cli import main

    rng = random.Random(17)
    corpus = tuning_corpus()
    streams = [chat_user(f"user-{i}", corpus, rng, days=1) for i in range(4)]
    streams += [attack_stream(f"sweeper-{i}", "coverage", corpus, rng, queries=300, days=1) for i in range(2)]
    log = tmp_path / "log.jsonl"
    write_log(streams, log)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    argv = ["replay", str(log), "--quiet", "--detectors", "coverage"]
    assert main([*argv, "--json", str(one)]) == 0
    assert main([*argv, "--json", str(two), "--jobs", "2"]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["clients"] == b["clients"]
    flagged = sorted(c["client"] for c in a["clients"] if c["flagged"])
    assert flagged == ["sweeper-0", "sweeper-1"]

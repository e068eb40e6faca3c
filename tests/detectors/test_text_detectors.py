"""The text detectors one by one: near-duplicate, template sweep, and the shared text features
(coverage: ``test_coverage.py``)."""

from __future__ import annotations

import json
import random

import pytest

from distillguard.detectors._text import TextFeatures, features, prompt_text
from distillguard.detectors.near_duplicate import NearDuplicateDetector
from distillguard.detectors.template import TemplateSweepDetector
from distillguard.errors import ConfigurationError
from distillguard.query import parse_query
from tests.detectors.traffic import (
    benign_prompts,
    jailbreak_prompts,
    observation,
    query,
    template_sweep,
)


def scores(det: object, texts: list[str], client: str = "c") -> list[float]:
    """The detector's score after each text."""
    return [det.score(observation(client, query(t), float(i))).score for i, t in enumerate(texts)]  # type: ignore[attr-defined]


def test_features_normalise_case_punctuation_and_digits() -> None:
    """Case, punctuation and the value of numbers do not change a prompt's words; only the
    exact text changes its key."""
    a = TextFeatures("Explain, step by step: question 17!")
    b = TextFeatures("explain step by step question 42")
    assert a.hashes == b.hashes and a.key != b.key
    assert a.skeleton == b.skeleton and len(a.skeleton) == 5  # explain step by step question
    assert len(a.content) == 1  # the number is the slot


def test_features_read_the_last_user_message_of_a_chat() -> None:
    """A chat's history is ignored: only the last user message is the prompt."""
    body = (
        b'{"messages": [{"role": "system", "content": "You are helpful."},'
        b'{"role": "user", "content": "first question"},'
        b'{"role": "assistant", "content": "an answer"},'
        b'{"role": "user", "content": [{"type": "text", "text": "second question"}]}]}'
    )
    q = parse_query(body)
    assert prompt_text(q) == "second question"
    assert features(q) is features(q)  # shared by the detectors of one request


def test_embedding_is_unit_length() -> None:
    """The hashed embedding is L2-normalised (or all zero for an empty prompt)."""
    vec = TextFeatures("how do I bake bread at home").embedding
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-9
    assert not any(TextFeatures("").embedding)


def test_near_duplicate_flags_systematic_variation() -> None:
    """One prompt with one word varied each time reaches a score of 1 within 60 queries."""
    rng = random.Random(0)
    words = ["cats", "dogs", "lizards", "hamsters", "parrots", "goldfish", "rabbits", "ferrets"]
    texts = [
        f"Write a detailed product description for an automatic feeder designed for {rng.choice(words)} "
        f"with a timer, a camera, a water fountain and a companion app, variant {i}"
        for i in range(80)
    ]
    s = scores(NearDuplicateDetector(), texts)
    assert max(s[:60]) == 1.0


def test_a_sweep_sent_as_token_ids_is_read_and_flagged() -> None:
    """A completions sweep sent pre-tokenised (``prompt`` as token ids, which vLLM and OpenAI
    accept) is not a blind spot: the ids are read as words, one id varied per request, and
    ``near_duplicate`` flags it as it flags the same sweep in text."""
    rng = random.Random(1)
    base = [rng.randrange(50_000) for _ in range(40)]
    det = NearDuplicateDetector()
    out = []
    for i in range(80):
        ids = list(base)
        ids[rng.randrange(len(ids))] = rng.randrange(50_000)
        body = json.dumps({"model": "m", "prompt": ids, "max_tokens": 1}).encode()
        out.append(det.score(observation("c", parse_query(body), float(i))).score)
    assert max(out[:60]) == 1.0
    q = parse_query(json.dumps({"prompt": [[464, 3290], [464, 3290, 318]]}).encode())
    assert q.inputs == 2 and q.text.split() == ["gjg", "fdmb", "gjg", "fdmb", "fcl"]
    assert parse_query(json.dumps({"prompt": [1, True]}).encode()).text == ""  # not token ids


def test_near_duplicate_ignores_exact_repeats_and_varied_users() -> None:
    """Retries of the same prompt and varied conversation do not score; one long prompt reused
    with up to five questions at a time stays below the flag level."""
    assert max(scores(NearDuplicateDetector(), ["what is the weather like in Paris today?"] * 50)) == 0.0
    rng = random.Random(1)
    assert max(scores(NearDuplicateDetector(), list(benign_prompts(rng, 300)))) == 0.0
    jb = jailbreak_prompts()
    reused = [f"{jb[i // 5]}\n\n{q}" for i, q in enumerate(benign_prompts(rng, 300))]
    assert max(scores(NearDuplicateDetector(), reused)) < 0.5  # variants of one jailbreak exist


def test_template_sweep_flagged_within_20_queries() -> None:
    """A template with a varying slot reaches a score of 1 within 20 queries."""
    s = scores(TemplateSweepDetector(), list(template_sweep(random.Random(2), 40)))
    assert max(s[:20]) == 1.0


def test_template_rotation_of_five_templates_is_caught() -> None:
    """An attacker rotating five templates is still caught within 100 queries."""
    templates = [
        "Please explain in detail how {} works and list the main steps involved in the process.",
        "Write a short essay about the history of {} and give three examples from the past.",
        "You are an expert. Describe the key ideas of {} and then answer the following question.",
        "Translate the following text about {} into French and show your reasoning step by step.",
        "Summarize what an undergraduate should know about {} in five bullet points with examples.",
    ]
    rng = random.Random(3)
    topics = [f"topic{i} subject{rng.randrange(999)}" for i in range(200)]
    texts = [templates[i % 5].format(topics[i]) for i in range(100)]
    assert max(scores(TemplateSweepDetector(), texts)) == 1.0


def test_template_whose_skeleton_varies_is_caught_by_its_anchors() -> None:
    """A slot holding a whole question (its common words change the skeleton on every fill),
    an instruction in another language and a fixed tail are caught within 30 queries by the
    prompt's head or tail anchor; the skeleton alone does not catch the first two."""
    templates = [
        "Write a thorough answer and lay out your chain of thought before the verdict. Question: {}",
        "Bitte erkläre Schritt für Schritt: {}",
        "{}\n\nShow every intermediate step, then the final answer.",
    ]
    for i, template in enumerate(templates):
        texts = [template.format(q) for q in benign_prompts(random.Random(10 + i), 60)]
        assert max(scores(TemplateSweepDetector(), texts)[:30]) >= 0.5, template
        if i < 2:
            assert max(scores(TemplateSweepDetector(anchor_recur=64), texts)) < 0.5, template


def test_template_ignores_a_users_batches_of_one_instruction() -> None:
    """A heavy user who every fifty prompts or so runs one short instruction over ten of their
    own texts ("Fix the grammar: ..."), twice in a row at worst, stays below the flag level."""
    rng = random.Random(6)
    own = list(benign_prompts(random.Random(7), 400))
    texts: list[str] = []
    for burst in range(12):
        texts += list(benign_prompts(rng, 45))
        for _ in range(2 if burst % 3 == 0 else 1):
            texts += [f"Fix the grammar: {rng.choice(own)}" for _ in range(10)]
    assert max(scores(TemplateSweepDetector(), texts)) < 0.5


def test_template_ignores_jailbreaks_and_benign_users() -> None:
    """Jailbreak prompts and varied benign users stay below the flag level."""
    jb = jailbreak_prompts()
    random.Random(4).shuffle(jb)
    assert max(scores(TemplateSweepDetector(), jb[:300])) < 0.5
    assert max(scores(TemplateSweepDetector(), list(benign_prompts(random.Random(5), 300)))) < 0.5


def test_template_ignores_single_token_classifiers() -> None:
    """A classifier app (one fixed instruction, varying texts, max_tokens=1) does not score;
    the same sweep asking for long completions does."""
    rng = random.Random(8)
    letters = "abcdefghijklmnopqrstuvwxyz"
    reviews = [" ".join("".join(rng.choices(letters, k=6)) for _ in range(4)) for _ in range(80)]
    texts = [
        f"Classify the sentiment of the following review as positive or negative. Review: {r}"
        for r in reviews
    ]
    det = TemplateSweepDetector()
    short = [
        det.score(observation("clf", query(t, max_tokens=1), float(i))).score for i, t in enumerate(texts)
    ]
    assert max(short) == 0.0
    assert max(scores(TemplateSweepDetector(), texts)) == 1.0


def _hidden_template(every: int, n: int) -> list[str]:
    """A varied benign stream with a template sweep's prompt in place of every ``every``-th."""
    own = list(benign_prompts(random.Random(21), n))
    sweep = iter(template_sweep(random.Random(22), n))
    return [next(sweep) if i % every == every - 1 else text for i, text in enumerate(own)]


def test_template_hidden_one_in_ten_is_caught_by_the_sustained_count() -> None:
    """One template prompt in ten never fills the window, but its skeleton's sustained count
    reaches the flag level within 300 requests; without the sustained count it is missed."""
    texts = _hidden_template(10, 300)
    det = TemplateSweepDetector()
    results = [det.score(observation("h", query(t), float(i))) for i, t in enumerate(texts)]
    first = next(i for i, r in enumerate(results) if r.score >= 0.5)
    assert first < 300 and results[first].reasons == ("sustained_template",)
    assert results[first].signals["sustained_count"] >= 12.0
    assert max(scores(TemplateSweepDetector(sustained_low=254, sustained_high=255), texts)) < 0.5


def test_habitual_phrasing_spread_over_days_is_not_a_template() -> None:
    """A person who asks "can you write a {x} in Python?" three times a day among thirty other
    prompts, for twenty days, stays below the flag level: the sustained count halves every
    twelve hours."""
    rng = random.Random(23)
    things = ["queue", "heap", "trie", "stack", "parser", "cache", "graph", "tokenizer", "linked list"]
    det = TemplateSweepDetector()
    top = 0.0
    for day in range(20):
        day_texts = list(benign_prompts(rng, 30)) + [
            f"can you write a {rng.choice(things)} in Python?" for _ in range(3)
        ]
        rng.shuffle(day_texts)
        for k, text in enumerate(day_texts):
            ts = day * 86_400.0 + 9 * 3600.0 + k * 900.0
            top = max(top, det.score(observation("habit", query(text), ts)).score)
    assert top < 0.5


def test_sustained_counts_age_with_time_and_requests() -> None:
    """The counts start with the client's 16th request; twelve more fills of one template make
    a count of 12; three days later (six half-lives) it starts again from 1; and every ``sustained_every``
    requests halve it."""
    sweep = list(template_sweep(random.Random(24), 40))
    det = TemplateSweepDetector()
    for i in range(27):
        last = det.score(observation("a", query(sweep[i]), float(i)))
    assert last.signals["sustained_count"] == 12.0
    later = det.score(observation("a", query(sweep[27]), 3 * 86_400.0))
    assert later.signals.get("sustained_count", 1.0) == 1.0
    det = TemplateSweepDetector(sustained_every=16)
    counts = [
        det.score(observation("b", query(sweep[i]), float(i))).signals.get("sustained_count", 0.0)
        for i in range(32)
    ]
    assert counts[14] == 0.0  # no counters before the 16th request
    assert counts[30] == 16.0 and counts[31] == 9.0  # 16 halved to 8, then this request


def test_template_sustained_options_are_checked() -> None:
    """Sustained-count options out of range fail at construction."""
    for options in (
        {"sustained_every": 4},
        {"sustained_halflife": 1.0},
        {"sustained_low": 20, "sustained_high": 10},
    ):
        with pytest.raises(ConfigurationError):
            TemplateSweepDetector(**options)  # type: ignore[arg-type]

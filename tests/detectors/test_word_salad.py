"""The random-word detector: word salad is flagged, natural text in any language is not."""

from __future__ import annotations

import random

import pytest

from distillguard.detectors._text import TextFeatures
from distillguard.detectors.word_salad import WordSaladDetector
from distillguard.errors import ConfigurationError
from tests.detectors.traffic import (
    benign_prompts,
    foreign_prompts,
    jailbreak_prompts,
    observation,
    query,
)

_SYLLABLES = [a + b for a in "bdfghjklmn" for b in "aeiou"][:20]  # ba, be, bi...
VOCABULARY = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES][::4]
"""2,000 made-up words (letters only: the text pass maps every digit to 0)."""


def salad(rng: random.Random, vocabulary: list[str]) -> str:
    """Words drawn at random (Krishna et al. 2020 RANDOM queries), 8 to 40 of them."""
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(8, 40)))


def scores(det: WordSaladDetector, texts: list[str], client: str = "c", **extra: object) -> list[float]:
    """The detector's score after each text."""
    return [det.score(observation(client, query(t, **extra), float(i))).score for i, t in enumerate(texts)]


def test_distinct_counts_the_prompts_distinct_words() -> None:
    """``TextFeatures.distinct`` counts distinct normalised words, with or without ``content``."""
    feats = TextFeatures("The cat saw the other cat, and THE dog.")
    assert feats.distinct == 6  # the, cat, saw, other, and, dog
    assert TextFeatures("").distinct == 0


def test_random_words_are_flagged_at_the_warm_up() -> None:
    """Random words from a 2,000-word vocabulary reach the flag level at the 32nd query."""
    rng = random.Random(1)
    s = scores(WordSaladDetector(), [salad(rng, VOCABULARY) for _ in range(80)])
    assert max(s[:31]) == 0.0
    assert s[31] >= 0.5 and max(s) <= 0.7


def test_natural_prompts_jailbreaks_and_other_languages_are_not() -> None:
    """English users, jailbreak prompts (long natural text) and other languages stay at 0."""
    jb = jailbreak_prompts()
    random.Random(4).shuffle(jb)
    for texts in (
        list(benign_prompts(random.Random(5), 300)),
        jb[:300],
        list(foreign_prompts(random.Random(6), 300)),
    ):
        assert max(scores(WordSaladDetector(), texts)) == 0.0


def test_short_answers_and_short_prompts_never_count() -> None:
    """The same word salad asking for one token (a classifier) or in short prompts scores 0."""
    rng = random.Random(2)
    long_salad = [" ".join(rng.sample(VOCABULARY, 20)) for _ in range(60)]
    assert max(scores(WordSaladDetector(), long_salad, max_tokens=1)) == 0.0
    short = [" ".join(rng.sample(VOCABULARY, 10)) for _ in range(60)]
    assert max(scores(WordSaladDetector(), short)) == 0.0
    assert max(scores(WordSaladDetector(), long_salad)) == 0.7


def test_word_salad_options_are_checked() -> None:
    """Out-of-range options fail at construction."""
    for options in ({"min_words": 2}, {"distinct": 0.2}, {"low": 0.8, "high": 0.5}, {"min_requests": 100}):
        with pytest.raises(ConfigurationError):
            WordSaladDetector(**options)  # type: ignore[arg-type]


def test_punctuated_prompts_without_repeats_are_not_word_salad() -> None:
    """Long prompts whose words never repeat but that are punctuated like sentences (as in
    languages whose words rarely repeat) stay at 0; the same words unpunctuated are flagged."""
    rng = random.Random(3)
    words = [rng.sample(VOCABULARY, 24) for _ in range(80)]
    sentences = [f"{' '.join(w[:10])}, {' '.join(w[10:18])}. {' '.join(w[18:])}." for w in words]
    assert max(scores(WordSaladDetector(), sentences)) == 0.0
    assert max(scores(WordSaladDetector(), [" ".join(w) + "?" for w in words])) == 0.7


def test_punctuation_counts_ascii_marks() -> None:
    """``TextFeatures.punctuation`` counts ASCII punctuation marks, not whitespace."""
    assert TextFeatures("Hello, world!\n\tBye.").punctuation == 3
    assert TextFeatures("no marks here").punctuation == 0

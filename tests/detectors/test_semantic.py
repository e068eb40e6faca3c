"""The embedders and the ``semantic_coverage`` detector.

The sentence-model tests need the ``embeddings`` extra: they skip without it locally and fail
in CI (``CI=true``), where ``.ci/run`` installs it."""

from __future__ import annotations

import importlib.util
import math
import os
import random
from collections.abc import Sequence

import pytest

from distillguard import ConfigurationError
from distillguard.detectors import load_detectors
from distillguard.detectors.embedders import Embedder, HashedEmbedder, SentenceEmbedder, embedder_named
from distillguard.detectors.semantic import SemanticCoverageDetector
from tests.detectors.traffic import TOPICS, benign_prompts, observation, query


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _require_extra() -> None:
    if (
        importlib.util.find_spec("all_minilm_l6_v2") is None
        or importlib.util.find_spec("sentence_transformers") is None
    ):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the embeddings extra is missing in CI: .ci/run must install it", pytrace=False)
        pytest.skip("needs pip install -e '.[embeddings]'")


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> SentenceEmbedder:
    _require_extra()
    return SentenceEmbedder(tmp_path_factory.mktemp("models"))


def _sweep(n: int) -> list[str]:
    """A coverage sweep: the English chatterbot corpus's questions and answers, shuffled."""
    from benchmarks.detection.corpora import load_corpus

    corpus = load_corpus("english")
    items = list(corpus.questions + corpus.answers)
    random.Random(7).shuffle(items)
    return items[:n]


class _Precomputed:
    """The sentence model's vectors for a known set of prompts, computed in one batch."""

    name = "minilm"
    dim = SentenceEmbedder.dim

    def __init__(self, model: SentenceEmbedder, texts: list[str]) -> None:
        unique = sorted(set(texts))
        self.vectors = dict(zip(unique, model.embed(unique), strict=True))

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        return [self.vectors[text] for text in texts]


# -- embedders ---------------------------------------------------------------------------------


def test_hashed_embedder_is_deterministic_and_normalised() -> None:
    embedder = HashedEmbedder()
    assert isinstance(embedder, Embedder)
    first, again, empty = embedder.embed(["the quick brown fox", "the quick brown fox", ""])
    assert first == again and len(first) == embedder.dim
    assert math.isclose(_cosine(first, first), 1.0, rel_tol=1e-9)
    assert set(empty) == {0.0}


def test_unknown_embedder_name_fails_fast() -> None:
    with pytest.raises(ConfigurationError, match="unknown embedder"):
        embedder_named("word2vec")
    with pytest.raises(ConfigurationError, match="batch_size"):
        SentenceEmbedder(batch_size=0)


def test_sentence_embedder_loads_offline_and_captures_meaning(sentence: SentenceEmbedder) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # never reaches for the hub
    assert (sentence.model_dir / "all-MiniLM-L6-v2" / "modules.json").exists()
    cat, kitten, tax = sentence.embed(
        ["How do I look after a cat?", "Tips for caring for a kitten", "How are capital gains taxed?"]
    )
    assert len(cat) == sentence.dim == 384
    assert math.isclose(_cosine(cat, cat), 1.0, rel_tol=1e-5)
    # paraphrases share no content word, yet lie closer than an unrelated question
    assert _cosine(cat, kitten) > _cosine(cat, tax) + 0.2
    again = sentence.embed(["How do I look after a cat?"])[0]  # alone, not in a batch
    assert _cosine(again, cat) > 0.9999


# -- the detector --------------------------------------------------------------------------------


def test_settings_are_checked_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="high"):
        SemanticCoverageDetector(embedder="hashed", low=0.8, high=0.5)
    with pytest.raises(ConfigurationError, match="min_queries"):
        SemanticCoverageDetector(embedder="hashed", window=64, min_queries=10)
    with pytest.raises(ConfigurationError, match="embedder"):
        SemanticCoverageDetector(embedder=object())  # type: ignore[arg-type]


def test_loaded_by_name_with_the_hashed_embedder() -> None:
    (detector,) = load_detectors({"semantic_coverage": {"embedder": "hashed"}})
    assert isinstance(detector, SemanticCoverageDetector)
    assert detector.blocking is False  # the hashed embedding is cheap enough to run inline


def test_bucket_is_stable_across_instances() -> None:
    a, b = SemanticCoverageDetector(embedder="hashed"), SemanticCoverageDetector(embedder="hashed")
    vectors = HashedEmbedder().embed([f"prompt number {i} about {w}" for i, w in enumerate(TOPICS)])
    assert [a.bucket(v) for v in vectors] == [b.bucket(v) for v in vectors]
    assert all(0 <= a.bucket(v) < a.buckets for v in vectors)


def _first_flag(
    detector: SemanticCoverageDetector, client: str, prompts: list[str]
) -> tuple[int | None, float]:
    first, highest = None, 0.0
    for i, text in enumerate(prompts):
        result = detector.score(observation(client, query(text), float(i)))
        highest = max(highest, result.score)
        if first is None and result.score >= 0.5:
            first = i + 1
    return first, highest


def test_sentence_model_separates_a_sweep_from_users_with_subjects(sentence: SentenceEmbedder) -> None:
    assert SemanticCoverageDetector(embedder=sentence).blocking is True  # a worker thread under ASGI
    sweep = _sweep(230)
    users = [list(benign_prompts(random.Random(k), 230)) for k in range(2)]
    detector = SemanticCoverageDetector(embedder=_Precomputed(sentence, sweep + users[0] + users[1]))
    first, highest = _first_flag(detector, "sweeper", sweep)
    assert first is not None and first <= 210, (first, highest)
    for k, prompts in enumerate(users):
        user_first, user_highest = _first_flag(detector, f"user-{k}", prompts)
        assert user_first is None, (k, user_highest)
    assert detector.tracked_clients() == 3


def test_non_text_and_empty_prompts_are_not_scored() -> None:
    detector = SemanticCoverageDetector(embedder="hashed", window=8, min_queries=8)
    vector = observation("c", query("   "))
    assert detector.score(vector).score == 0.0
    assert detector.tracked_clients() == 0

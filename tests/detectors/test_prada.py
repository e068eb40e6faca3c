"""PRADA on numeric vectors, and the pure-Python Shapiro-Wilk test behind it."""

from __future__ import annotations

import json
import random

import pytest

from distillguard.detectors._normality import shapiro_wilk
from distillguard.detectors.prada import PradaDetector
from distillguard.query import parse_query
from tests.detectors.traffic import observation, query


def vector_obs(client: str, vector: list[float], ts: float = 0.0):  # type: ignore[no-untyped-def]
    """An observation of a classic predict request."""
    return observation(client, parse_query(json.dumps({"inputs": [vector]}).encode()), ts)


def test_shapiro_wilk_accepts_normal_and_rejects_skewed_samples() -> None:
    """W is near 1 with a large p for normal samples, small with a tiny p for exponential ones."""
    rng = random.Random(0)
    w, p = shapiro_wilk([rng.gauss(5, 2) for _ in range(150)])
    assert w > 0.97 and p > 0.01
    w, p = shapiro_wilk([rng.expovariate(1.0) for _ in range(150)])
    assert w < 0.9 and p < 1e-6


def test_shapiro_wilk_is_affine_invariant_and_bounded() -> None:
    """Shifting and scaling a sample leaves W unchanged; W never exceeds 1."""
    rng = random.Random(1)
    xs = [rng.random() for _ in range(60)]
    w1, _ = shapiro_wilk(xs)
    w2, _ = shapiro_wilk([3 * x - 7 for x in xs])
    assert abs(w1 - w2) < 1e-9 and 0 < w1 <= 1
    assert shapiro_wilk([2.0] * 20) == (1.0, 1.0)
    with pytest.raises(ValueError):
        shapiro_wilk([1.0, 2.0])


def test_non_finite_inputs_score_one_at_once() -> None:
    """NaN or infinity in a vector input scores 1 on the first request."""
    det = PradaDetector()
    obs = observation("fee", parse_query(b'{"inputs": [[1.0, "nan", 2.0]]}'))
    result = det.score(obs)
    assert result.score == 1.0 and result.reasons == ("non_finite_input",)


def test_benign_inputs_are_not_flagged() -> None:
    """Independent natural-looking inputs (Gaussian features) never raise the alarm in 600 queries."""
    for seed in range(3):
        rng = random.Random(seed)
        det = PradaDetector()
        scores = [det.score(vector_obs("b", [rng.gauss(0, 1) for _ in range(16)])).score for _ in range(600)]
        assert max(scores) == 0.0


def test_perturbation_streams_are_caught_within_100_queries() -> None:
    """A synthetic stream (a few seeds, each followed by small perturbations of it, as in
    Jacobian augmentation) is caught within 100 queries."""
    for seed in range(3):
        rng = random.Random(seed)
        det = PradaDetector()
        caught = None
        for i in range(300):
            if i % 10 == 0:
                base = [rng.gauss(0, 1) for _ in range(16)]
                x = base
            else:
                x = [b + rng.choice((-0.05, 0.05)) for b in base]
            if det.score(vector_obs("a", x)).score == 1.0:
                caught = i + 1
                break
        assert caught is not None and caught <= 100, caught


def test_text_queries_are_ignored() -> None:
    """PRADA scores only vector inputs and keeps no state for text clients."""
    det = PradaDetector()
    assert det.score(observation("t", query("hello"))).score == 0.0
    assert len(det.states) == 0

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


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "tiny", [[5e-324, 0.0, 1e-320], [0.0, 0.0, 0.0], [1e-310, -1e-315, 0.0], [5e-324], [-5e-324, 0.0]]
)
def test_zero_and_subnormal_inputs_never_fail_the_detector(tiny: list[float]) -> None:
    """Inputs of zeros and subnormals are scored like any others, before and after normal inputs
    of the same client. Their quantisation step used to overflow (the detector raised, and was
    switched off for the request) or, below 64 times the smallest subnormal, be 0 (the request
    never ended)."""
    det = PradaDetector()
    vectors = [[v * (i + 1) for v in tiny] for i in range(4)] + [[1.0, 2.0, float(i)] for i in range(4)]
    for i, vector in enumerate(vectors + vectors[:4]):
        assert 0.0 <= det.score(vector_obs("tiny", vector, float(i))).score <= 1.0


def test_benign_inputs_are_not_flagged() -> None:
    """Independent natural-looking inputs (Gaussian features) never raise the alarm in 600 queries."""
    for seed in range(3):
        rng = random.Random(seed)
        det = PradaDetector()
        scores = [det.score(vector_obs("b", [rng.gauss(0, 1) for _ in range(16)])).score for _ in range(600)]
        assert max(scores) == 0.0


def test_perturbation_streams_are_caught_within_50_queries() -> None:
    """A synthetic stream (a few seeds, each followed by small perturbations of it, as in
    Jacobian augmentation) is caught within 50 queries."""
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
        assert caught is not None and caught <= 50, caught


def _mixture(rng: random.Random, classes: int = 5, dim: int = 16) -> list[list[float]]:
    return [[rng.gauss(0, 1.5) for _ in range(dim)] for _ in range(classes)]


def _natural_client(seed: int, n: int) -> list[list[float]]:
    """A benign app over a 5-class mixture: fresh records, exact re-sends (10%) and edited
    records (one feature changed, 5%)."""
    rng = random.Random(seed)
    means = _mixture(rng)
    sent: list[list[float]] = []
    for _ in range(n):
        r = rng.random()
        if sent and r < 0.1:
            x = list(rng.choice(sent[-20:]))
        elif sent and r < 0.15:
            x = list(rng.choice(sent[-20:]))
            x[rng.randrange(len(x))] += rng.gauss(0, 1)
        else:
            x = [rng.gauss(m, 0.8) for m in rng.choice(means)]
        sent.append(x)
    return sent


def test_natural_multi_class_traffic_is_not_flagged() -> None:
    """Natural records of several classes, with re-sends and edits, never score; the reference's
    pooled Shapiro-Wilk test (delta=0.9) flags the same clients (their distances are a mixture)."""
    reference_alarms = 0
    for seed in range(4):
        xs = _natural_client(seed, 400)
        det = PradaDetector()
        assert max(det.score(vector_obs("b", x)).score for x in xs) == 0.0
        ref = PradaDetector(delta=0.9)
        reference_alarms += any(ref.score(vector_obs("b", x)).score == 1.0 for x in xs)
    assert reference_alarms >= 2


def test_jacobian_style_augmentation_is_caught_within_50_queries() -> None:
    """Papernot-style rounds (ten natural seeds, then every known point plus a signed step of
    0.1 per feature) are caught within 50 queries."""
    for seed in range(3):
        rng = random.Random(seed)
        means = _mixture(rng, classes=10)
        known = [[rng.gauss(m, 0.8) for m in means[c]] for c in range(10)]
        stream = list(known)
        while len(stream) < 200:
            children = [[v + 0.1 * rng.choice((-1, 1)) for v in x] for x in known]
            stream += children
            known += children
        det = PradaDetector()
        caught = next(
            (i + 1 for i, x in enumerate(stream) if det.score(vector_obs("a", x)).score >= 0.5), None
        )
        assert caught is not None and caught <= 50, caught


def test_exact_resends_are_skipped() -> None:
    """The same vector sent again and again measures nothing and never scores."""
    det = PradaDetector()
    x = [0.5, -1.0, 2.0, 3.5]
    assert max(det.score(vector_obs("r", x)).score for _ in range(200)) == 0.0
    state = det.states.peek("r")
    assert state is not None and state.n == 0 and state.count == 1


def test_a_first_query_at_another_scale_does_not_blind_or_trip_the_detector() -> None:
    """A first query a thousand times larger than the rest: natural traffic after it is not
    flagged, a perturbation stream after it is still caught."""
    xs = _natural_client(9, 300)
    det = PradaDetector()
    det.score(vector_obs("s", [1000.0 * v for v in xs[0]]))
    assert max(det.score(vector_obs("s", x)).score for x in xs[1:]) == 0.0
    rng = random.Random(10)
    det = PradaDetector()
    det.score(vector_obs("p", [1000.0] * 16))
    base = [rng.gauss(0, 1) for _ in range(16)]
    scores = []
    for i in range(100):
        if i % 10 == 0:
            base = [rng.gauss(0, 1) for _ in range(16)]
        scores.append(det.score(vector_obs("p", [b + rng.choice((-0.05, 0.05)) for b in base])).score)
    assert max(scores) >= 0.5


def test_uniform_random_queries_are_outside_the_population_domain() -> None:
    """Once the endpoint's population of natural clients has set the domain reference, a client
    sending uniform random points over the data's range is flagged within 40 queries; the
    natural clients never are."""
    rng = random.Random(11)
    means = _mixture(rng, classes=6)
    det = PradaDetector(warmup=500)
    natural_max = 0.0
    for i in range(1500):  # 30 natural clients
        x = [rng.gauss(m, 0.8) for m in rng.choice(means)]
        natural_max = max(natural_max, det.score(vector_obs(f"n{i % 30}", x)).score)
    scores = []
    for _ in range(40):
        x = [rng.uniform(-5.0, 5.0) for _ in range(16)]
        scores.append(det.score(vector_obs("random", x)).score)
        natural = [rng.gauss(m, 0.8) for m in rng.choice(means)]
        natural_max = max(natural_max, det.score(vector_obs("n0", natural)).score)
    assert natural_max == 0.0
    assert max(scores) >= 0.5
    assert det.score(vector_obs("random", [rng.uniform(-5.0, 5.0) for _ in range(16)])).reasons == (
        "outside_input_domain",
    )


def test_text_queries_are_ignored() -> None:
    """PRADA scores only vector inputs and keeps no state for text clients."""
    det = PradaDetector()
    assert det.score(observation("t", query("hello"))).score == 0.0
    assert len(det.states) == 0

"""PRADA for numeric-vector endpoints (``prada``).

**Signal.** Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks" (EuroS&P 2019;
reference code ``SSGAalto/prada-protecting-against-dnn-model-stealing-attacks``,
``src/growing_set.py``): for each new query, the minimum L2 distance to the client's *growing
set* of earlier queries is recorded; the query joins the growing set when that distance exceeds
``max(0, mean - std)`` of the distances so far. Benign inputs give roughly normally distributed
distances; synthetic and perturbation streams (Jacobian augmentation, FGSM-style steps, ART's
FunctionallyEquivalentExtraction) do not. Every ``test_every`` queries, once more than
``min_distances`` distances are kept (50 by default, to decide within 100 queries; the reference
code waits for 100), the Shapiro-Wilk W of the distances (after removing values
beyond 3 standard deviations, as the reference code does) is compared to ``delta`` (0.9 in the
reference code): ``W < delta`` raises the alarm. Shapiro-Wilk is computed in pure Python with
Royston's approximation (:mod:`._normality`; no SciPy).

Non-finite inputs (NaN, infinity) score 1 at once: no legitimate client sends them, and ART's
FunctionallyEquivalentExtraction does from its first query.

Differences from the reference: memory is capped. The growing set keeps at most
``memory_bytes / (4 * dim)`` vectors (float32; the oldest is replaced), the distances a ring of
``max_distances``; the test runs over what is kept. One growing set per client, not per
predicted class (the class is not known when the request is scored).

**Anchor.** Reported "all prior attacks, no false positives" (MNIST/GTSRB, synthetic-query
attacks); a replay on scikit-learn digits caught a perturbation stream at 151 queries and ART
FunctionallyEquivalentExtraction at 111, and missed natural-data CopycatCNN/KnockoffNets
(detection.md). Text endpoints: PRADA-style detection is at chance (LabRAI), so this detector
only scores ``vector`` queries.

**Cost.** O(kept x dim) per vector query (``math.dist`` in C), plus an O(n log n) test every
``test_every`` queries. State: ``memory_bytes`` of vectors plus ``4 * max_distances`` bytes.
Text queries cost one attribute check.
"""

from __future__ import annotations

import math
from array import array

from ._base import check_range
from ._normality import shapiro_wilk
from ._protocol import DetectorResult, Observation
from ._state import LRUStates

__all__ = ["PradaDetector"]

_EMPTY = DetectorResult("prada", 0.0)


class _State:
    __slots__ = ("alarm", "count", "d_pos", "dim", "dist", "k_pos", "kept", "n", "w")

    def __init__(self) -> None:
        self.kept = array("f")  # the growing set, flattened: count vectors of dim floats
        self.count = 0
        self.dim = 0
        self.k_pos = 0
        self.dist = array("f")
        self.d_pos = 0
        self.n = 0
        self.alarm = False
        self.w = 1.0


class PradaDetector:
    """PRADA's growing-set distance test, with capped memory per client.

    Args:
        delta: the alarm threshold on Shapiro-Wilk W (0.9 in the reference code).
        min_distances: the test runs once more than this many distances are kept.
        test_every: run the test every this many queries.
        max_distances: the distances kept per client (a ring).
        memory_bytes: the budget for kept vectors per client.
        max_clients: the cap on tracked clients.
    """

    name = "prada"

    def __init__(
        self,
        *,
        delta: float = 0.9,
        min_distances: int = 50,
        test_every: int = 10,
        max_distances: int = 150,
        memory_bytes: int = 2048,
        max_clients: int = 50_000,
    ) -> None:
        check_range("delta", delta, 0.0, 1.0)
        check_range("min_distances", min_distances, 12, 5000)
        check_range("test_every", test_every, 1, 10_000)
        check_range("max_distances", max_distances, min_distances + 1, 5000)
        check_range("memory_bytes", memory_bytes, 64, 1 << 24)
        self.delta = delta
        self.min_distances = min_distances
        self.test_every = test_every
        self.max_distances = max_distances
        self.memory_bytes = memory_bytes
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Add the query to the client's growing-set statistics; score the last test."""
        vector = observation.query.vector
        if vector is None:
            return _EMPTY
        if not all(map(math.isfinite, vector)):
            return DetectorResult(self.name, 1.0, ("non_finite_input",), {"non_finite": 1.0})
        x = array("f", vector)
        dim = len(x)
        state = self.states.get(observation.identity.client_id)
        if state.dim != dim:  # a new client, or one that changed input shape: start over
            state.kept = array("f")
            state.dist = array("f")
            state.dim, state.count, state.k_pos, state.d_pos = dim, 0, 0, 0
        capacity = max(2, self.memory_bytes // (4 * dim))
        state.n += 1
        kept = state.kept
        if state.count == 0:
            kept.extend(x)
            state.count = 1
            return DetectorResult(self.name, 1.0 if state.alarm else 0.0, (), {"w": state.w})
        d = min(math.dist(x, kept[i * dim : (i + 1) * dim]) for i in range(state.count))
        dist = state.dist
        if len(dist) > 1:
            mean = math.fsum(dist) / len(dist)
            std = math.sqrt(max(math.fsum(v * v for v in dist) / len(dist) - mean * mean, 0.0))
            grow = d > max(0.0, mean - std)
        else:
            grow = True
        if len(dist) < self.max_distances:
            dist.append(d)
        else:
            dist[state.d_pos] = d
            state.d_pos = (state.d_pos + 1) % self.max_distances
        if grow:
            if state.count < capacity:
                kept.extend(x)
                state.count += 1
            else:
                slot = state.k_pos % capacity
                kept[slot * dim : (slot + 1) * dim] = x
                state.k_pos = (state.k_pos + 1) % capacity
        if len(dist) > self.min_distances and state.n % self.test_every == 0:
            state.w = _w(dist)
            state.alarm = state.w < self.delta
        signals = {"w": state.w, "distances": float(len(dist))}
        if state.alarm:
            return DetectorResult(self.name, 1.0, ("non_normal_distances",), signals)
        return DetectorResult(self.name, 0.0, (), signals)


def _w(dist: array[float]) -> float:
    values = list(dist)
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    kept = [v for v in values if abs(v - mean) <= 3 * std] if std > 0 else values
    if len(kept) < 12:
        return 1.0
    return shapiro_wilk(kept)[0]

"""PRADA-style detection for numeric-vector endpoints (``prada``).

**Signal.** Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks" (EuroS&P 2019;
reference code ``SSGAalto/prada-protecting-against-dnn-model-stealing-attacks``,
``src/growing_set.py``) watch, per client, the minimum L2 distance of each new query to the
client's earlier queries: synthetic and perturbation streams (Papernot et al.'s Jacobian-based
dataset augmentation, its targeted variants, iterative FGSM steps) send points a small step away
from points they sent before, natural inputs do not. Here each new query's nearest earlier query
(among the last ``ring`` distinct ones) is *close* when it lies within ``close`` (0.25) times the
query's mean distance to them; the score ramps with the share of close queries among the
client's last ``window`` (64) distinct queries, from ``low`` (0.3) to ``high`` (0.5), once
``min_distances`` (20) have been measured. Exact re-sends of an earlier vector (retries,
refreshed pages) are skipped: they carry nothing new and are frequent in benign traffic.

**Why not the reference test.** The reference alarms when the Shapiro-Wilk W of the distances
falls below ``delta`` (0.9), which assumes the distances of benign inputs are roughly normal.
That holds per predicted class, and the reference keeps one growing set per class; the class is
not known when a request is scored, and with one pooled set the distances of natural traffic
over several classes are a mixture (a close same-class neighbour or a far other-class one): the
pooled W test flagged 193 of 200 benign vector clients of the detection benchmark at their 60th
query. The close share measures the property the test is meant to catch (many small steps from
earlier queries) without the normality assumption and without the class, and needs no scale:
"close" is relative to the client's own spread. The W test is still available (``delta > 0``,
over a ring of ``max_distances`` nearest-neighbour distances, every ``test_every`` queries),
off by default.

**Input domain.** Uniform random queries over the data's range (the oldest extraction
strategy, Tramer et al. 2016) are not close to each other, and per client they look like one
broad natural class. What gives them away is the endpoint's *population*: a running per-feature
mean and variance over every client's distinct queries (:mod:`._domain`, after ``warmup``
queries); a query is *outside* when its mean squared z-score exceeds ``outside`` (2; natural
inputs average 1, uniform points over the data's range about 4), and the share of outside
queries among the client's last ``window`` ramps the score like the close share. The reference
describes the population only when no single client sends most of the traffic.

Non-finite inputs (NaN, infinity) score 1 at once: no legitimate client sends them, and ART's
FunctionallyEquivalentExtraction does from its first query.

**Memory.** At most ``features`` (32) evenly spaced features of a query are compared (a larger
input is sub-sampled), quantised to 8 bits each with a per-client step, set from the client's
first query and doubled (the kept bytes re-quantised by one table look-up) whenever a query does
not fit; a query more than eight times finer than the step starts the kept queries over. Kept:
``min(ring, memory_bytes / features)`` queries (32 at the defaults, 1 KB), a 32-bit hash of each
(for exact re-sends) and two ``window``-bit rings; per endpoint, two float arrays per input
width for the domain reference.

**Anchor.** PRADA reported "all prior attacks, no false positives" (MNIST/GTSRB, synthetic-query
attacks); a replay on scikit-learn digits caught a perturbation stream at 151 queries and ART
FunctionallyEquivalentExtraction at 111, and missed natural-data CopycatCNN/KnockoffNets
(detection.md). Counting close query pairs per account is also the signal of Chen, Carlini and
Wagner's stateful detection and of SEAT. Text endpoints: PRADA-style detection is at chance
(LabRAI), so this detector only scores ``vector`` queries.

**Cost.** Sub-sampling and quantising the query (O(features)) and at most ``ring`` (32)
``math.dist`` calls over ``features`` bytes per vector query, plus one more for the domain
reference (whose update, a Python loop over the features, runs for one query in four): flat in
the input size and in the client's history. With ``delta > 0``, an O(n log n) test every
``test_every`` queries. Text queries cost one attribute check.
"""

from __future__ import annotations

import math
from array import array

from ._base import check_range, ramp
from ._domain import DomainReference
from ._normality import shapiro_wilk
from ._protocol import DetectorResult, Observation
from ._state import LRUStates

__all__ = ["PradaDetector"]

_EMPTY = DetectorResult("prada", 0.0)
_COARSER = bytes(128 + (b - 128) // 2 for b in range(256))  # halves the resolution of kept bytes


class _State:
    __slots__ = (
        "alarm",
        "count",
        "d_pos",
        "dim",
        "dist",
        "flags",
        "hashes",
        "kept",
        "n",
        "outside",
        "outside_n",
        "pos",
        "score",
        "step",
        "w",
    )

    def __init__(self) -> None:
        self.reset(0, 0.0)
        self.flags = 0
        self.n = 0
        self.outside = 0
        self.outside_n = 0
        self.score = 0.0
        self.dist = array("f")
        self.d_pos = 0
        self.alarm = False
        self.w = 1.0

    def reset(self, dim: int, step: float) -> None:
        """Forget the kept queries (a new input shape, or a new quantisation step)."""
        self.kept = bytearray()  # the last distinct queries, 8 bits per feature (128 = 0)
        self.hashes = bytearray()  # their 32-bit hashes, for exact re-sends
        self.count = 0
        self.pos = 0
        self.dim = dim
        self.step = step


class PradaDetector:
    """PRADA-style close-query detection on vector inputs, with capped memory per client.

    Args:
        close: a query is close when its nearest kept query lies within ``close`` times its
            mean distance to the kept queries.
        low: the close share at which the score starts rising.
        high: the close share at which the score reaches 1.
        window: how many recent close/not-close outcomes are kept.
        min_distances: no score before this many distances were measured.
        ring: at most this many recent distinct queries are kept.
        features: at most this many evenly spaced features of a query are compared (a larger
            input is sub-sampled: the cost per query stays flat in the input size).
        memory_bytes: the budget for kept queries per client (one byte per feature).
        outside: a query is outside the endpoint's input domain when its mean squared z-score
            against the population reference exceeds this (about 1 for natural inputs).
        warmup: queries of one input width before the population reference is used.
        delta: the reference's Shapiro-Wilk alarm threshold on W (0.9 in the reference code;
            0 disables the test, the default).
        test_every: run the Shapiro-Wilk test every this many queries.
        max_distances: the nearest-neighbour distances kept for the test (a ring).
        max_clients: the cap on tracked clients.
    """

    name = "prada"
    shares_state = True

    def __init__(
        self,
        *,
        close: float = 0.25,
        low: float = 0.3,
        high: float = 0.5,
        window: int = 64,
        min_distances: int = 20,
        ring: int = 32,
        features: int = 32,
        memory_bytes: int = 2048,
        outside: float = 2.0,
        warmup: int = 1000,
        delta: float = 0.0,
        test_every: int = 10,
        max_distances: int = 150,
        max_clients: int = 50_000,
    ) -> None:
        check_range("close", close, 0.0, 1.0)
        check_range("low", low, 0.0, 1.0)
        check_range("high", high, low, 1.0)
        check_range("window", window, 8, 1024)
        check_range("min_distances", min_distances, 1, window)
        check_range("ring", ring, 2, 4096)
        check_range("features", features, 1, 1 << 16)
        check_range("memory_bytes", memory_bytes, 64, 1 << 24)
        check_range("outside", outside, 1.0, 1e6)
        check_range("warmup", warmup, 1, 1 << 30)
        check_range("delta", delta, 0.0, 1.0)
        check_range("test_every", test_every, 1, 10_000)
        check_range("max_distances", max_distances, 12, 5000)
        self.close = close
        self.low = low
        self.high = high
        self.window = window
        self._mask = (1 << window) - 1
        self.min_distances = min_distances
        self.ring = ring
        self.features = features
        self.memory_bytes = memory_bytes
        self.outside = outside
        self.domain = DomainReference(warmup=warmup)
        self.delta = delta
        self.test_every = test_every
        self.max_distances = max_distances
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Compare the query with the client's kept queries; score the client's close share."""
        vector = observation.query.vector
        if vector is None:
            return _EMPTY
        if not all(map(math.isfinite, vector)):
            return DetectorResult(self.name, 1.0, ("non_finite_input",), {"non_finite": 1.0})
        dim = len(vector)
        state = self.states.get(observation.identity.client_id)
        key = (hash(vector) & 0xFFFFFFFF).to_bytes(4, "little")
        if state.dim == dim and _resent(state.hashes, key):
            return self._result(state)
        sample = vector[:: -(-dim // self.features)]  # at most `features` evenly spaced features
        width = len(sample)
        top = max(map(abs, sample))
        if top < 1e-300:  # nothing but zeros and subnormals: 1 / step would overflow
            top = 0.0
        if state.dim != dim or (top > 0.0 and top < 8.0 * state.step):
            # a new client or input shape, or a query too fine for the current step (fewer than
            # 3 bits): start the kept queries over, at 6 bits for this query's largest feature
            state.reset(dim, top / 64.0 if top > 0.0 else 1.0)
        while top > 127.0 * state.step:  # does not fit: halve the resolution of what is kept
            state.step *= 2.0
            state.kept = state.kept.translate(_COARSER)
        inv = 1.0 / state.step
        q = bytes([128 + round(v * inv) for v in sample])
        kept = state.kept
        hashes = state.hashes
        capacity = max(2, min(self.ring, self.memory_bytes // width))
        count = state.count
        if count:
            ds = [math.dist(q, kept[i : i + width]) for i in range(0, count * width, width)]
            d = min(ds)
            is_close = d < self.close * math.fsum(ds) / count
            state.flags = ((state.flags << 1) | is_close) & self._mask
            state.n += 1
            if self.delta > 0.0:
                self._test(state, d)
        if count < capacity:
            kept.extend(q)
            hashes.extend(key)
            state.count = count + 1
        else:
            slot = state.pos
            kept[slot * width : (slot + 1) * width] = q
            hashes[4 * slot : 4 * slot + 4] = key
            state.pos = (slot + 1) % capacity
        spread = self.domain.spread(sample)
        if spread is not None:
            state.outside = ((state.outside << 1) | (spread > self.outside)) & self._mask
            state.outside_n += 1
        state.score = max(_share(state.flags, state.n, self), _share(state.outside, state.outside_n, self))
        return self._result(state)

    def _test(self, state: _State, d: float) -> None:
        dist = state.dist
        if len(dist) < self.max_distances:
            dist.append(d)
        else:
            dist[state.d_pos] = d
            state.d_pos = (state.d_pos + 1) % self.max_distances
        if len(dist) >= 50 and state.n % self.test_every == 0:
            state.w = _w(dist)
            state.alarm = state.w < self.delta

    def _result(self, state: _State) -> DetectorResult:
        if state.n < self.min_distances and state.outside_n < self.min_distances:
            return _EMPTY
        close = state.flags.bit_count() / max(1, min(state.n, self.window))
        outside = state.outside.bit_count() / max(1, min(state.outside_n, self.window))
        signals = {"close_share": close, "outside_share": outside}
        if self.delta > 0.0:
            signals["w"] = state.w
            if state.alarm:
                return DetectorResult(self.name, 1.0, ("non_normal_distances",), signals)
        if state.score <= 0.0:
            return DetectorResult(self.name, 0.0, (), signals)
        reason = "close_queries" if close >= outside else "outside_input_domain"
        return DetectorResult(self.name, state.score, (reason,), signals)


def _share(flags: int, n: int, det: PradaDetector) -> float:
    """The ramped share of set bits among the last ``min(n, window)`` (0 before ``min_distances``)."""
    if n < det.min_distances:
        return 0.0
    return ramp(flags.bit_count() / min(n, det.window), det.low, det.high)


def _resent(hashes: bytearray, key: bytes) -> bool:
    """Whether ``key`` is one of the kept 32-bit hashes (aligned, so no false match across two)."""
    start = hashes.find(key)
    while start != -1:
        if start % 4 == 0:
            return True
        start = hashes.find(key, start + 1)
    return False


def _w(dist: array[float]) -> float:
    values = list(dist)
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    kept = [v for v in values if abs(v - mean) <= 3 * std] if std > 0 else values
    if len(kept) < 12:
        return 1.0
    return shapiro_wilk(kept)[0]

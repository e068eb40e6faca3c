"""Semantic coverage detector (``semantic_coverage``): how fast a client's prompts reach new
regions of meaning. Opt-in; meant for the sentence-embedding model of the ``embeddings`` extra.

**Signal.** A coverage sweep (KnockoffNets / CopycatCNN for text: a corpus queried item by item)
keeps asking about something new; a person, however busy, returns to a few subjects. Each prompt
is embedded (:mod:`distillguard.detectors.embedders`) and hashed by ``bits`` random hyperplanes
(sign LSH, SimHash of the embedding) into one of ``2**bits`` buckets; the client's seen buckets
are a bitset. The *novelty* is the share of its last ``window`` text prompts that landed in a
bucket the client had not reached before; the score ramps from 0 at ``low`` to ``max_score`` at
``high``, from the ``min_queries``-th prompt on. The bitset is cleared once a ``rotate`` share of
it is set, so a long-lived client is judged on its recent reach.

With the real sentence model, nearby meanings share buckets whatever their wording, so rephrasing
one question does not look new and an unrelated question does; with the default hashed embedding
the buckets follow shared *words* (cheap, and close to what the ``coverage`` detector measures
with its vocabulary filter).

**Anchor.** CAP ("Stealing and Defending the Ends of LLMs"): random-hyperplane LSH of embeddings
into 2,048 buckets, coverage = seen buckets / 2,048. This detector measures the *rate* of new
buckets over a recent window instead of the cumulative fill, so that it does not grow with the
client's age, and judges each client against a benign calibration (docs/detection.md) rather than
a fixed coverage level.

**Cost.** One embedding per text request (the sentence model: milliseconds to tens of
milliseconds on a CPU, which is why the detector declares ``blocking = True`` with it and is
opt-in; the hashed embedding: a few microseconds), ``bits`` dot products, a bit test. State: a
``2**bits / 8``-byte bitset (256 bytes by default) and a 64-bit ring per client.

**Measured** (``python -m benchmarks.semantic``, the sentence model, defaults; docs/detectors.md):
corpus sweeps reach a novelty of 0.89-0.95 after 200 prompts (flagged from prompt 200), users
who keep to a few subjects 0.52-0.64 (never scored), the jailbreak replayer 0.52. Users whose
prompts range over a whole corpus as widely as a sweep (the detection benchmark's "power
users", built from the same corpus as its sweeps) reach 0.88-0.95 and are flagged too: deploy it
where users have a domain (a coding assistant, a support bot), in shadow mode first, and
calibrate ``low``/``high`` on the deployment's own benign log.

**Limits.** A sweep mixed into a user's own traffic raises the novelty in proportion to its
share only; slow sweeps spread over many accounts stay under ``min_queries`` per account (the
``scripted_sweep`` and ``campaign`` detectors look at those).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import mul

from ..errors import ConfigurationError
from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates, bit_ring_push
from ._text import prompt_text
from .embedders import Embedder, HashedEmbedder, embedder_named

__all__ = ["SemanticCoverageDetector"]

_EMPTY = DetectorResult("semantic_coverage", 0.0)


class _State:
    __slots__ = ("n", "ring", "seen", "set_bits")

    def __init__(self, buckets: int) -> None:
        self.seen = bytearray(buckets // 8)  # which buckets the client reached
        self.set_bits = 0
        self.ring = 0  # bit ring: which of the last ``window`` prompts reached a new bucket
        self.n = 0  # text prompts seen


class SemanticCoverageDetector:
    """Scores clients whose prompts keep reaching new regions of embedding space.

    Args:
        embedder: an :class:`~distillguard.detectors.embedders.Embedder`, or the name of a
            built-in one: ``"minilm"`` (default; the ``embeddings`` extra) or ``"hashed"``.
        bits: hyperplanes of the LSH (``2**bits`` buckets).
        window: how many recent prompts the novelty is measured over (at most 64).
        min_queries: no score before this many text prompts of the client.
        low: a novelty at or below this scores 0.
        high: a novelty at or above this scores ``max_score``.
        max_score: the highest score this detector gives.
        rotate: the bitset is cleared once this share of the buckets is set.
        seed: seeds the hyperplanes (the same seed gives the same buckets in every process).
        max_clients: the cap on tracked clients.
    """

    name = "semantic_coverage"
    shares_state = True

    def __init__(
        self,
        *,
        embedder: Embedder | str = "minilm",
        bits: int = 11,
        window: int = 64,
        min_queries: int = 200,
        low: float = 0.65,
        high: float = 0.85,
        max_score: float = 0.8,
        rotate: float = 0.25,
        seed: int = 0x5E3A,
        max_clients: int = 50_000,
    ) -> None:
        check_range("bits", bits, 3, 16)
        check_range("window", window, 8, 64)
        check_range("min_queries", min_queries, window, 1_000_000)
        check_range("low", low, 0.0, 1.0)
        check_range("high", high, low + 1e-6, 1.0)
        check_range("max_score", max_score, 0.0, 1.0)
        check_range("rotate", rotate, 0.01, 1.0)
        self.embedder: Embedder = embedder_named(embedder) if isinstance(embedder, str) else embedder
        if not isinstance(self.embedder, Embedder) or self.embedder.dim < 1:
            raise ConfigurationError("embedder must provide name, dim and embed(texts)")
        # the sentence model takes milliseconds: run it in a worker thread under ASGI
        self.blocking = not isinstance(self.embedder, HashedEmbedder)
        self.bits, self.window, self.min_queries = bits, window, min_queries
        self.low, self.high, self.max_score = low, high, max_score
        self.buckets = 1 << bits
        self._rotate_at = max(1, int(rotate * self.buckets))
        rng = random.Random(seed)
        self._planes = [tuple(rng.gauss(0.0, 1.0) for _ in range(self.embedder.dim)) for _ in range(bits)]
        self.states: LRUStates[_State] = LRUStates(lambda: _State(self.buckets), max_clients)

    def bucket(self, vector: Sequence[float]) -> int:
        """The LSH bucket of an embedding (bit ``i`` set when it lies above hyperplane ``i``)."""
        code = 0
        for i, plane in enumerate(self._planes):
            if sum(map(mul, plane, vector)) > 0.0:
                code |= 1 << i
        return code

    def tracked_clients(self) -> int:
        """How many clients have state (reported by the telemetry's tracked-clients gauge)."""
        return len(self.states)

    def score(self, observation: Observation) -> DetectorResult:
        """Record the prompt's bucket; score the client's recent novelty."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        text = prompt_text(query)
        if not text.strip():
            return _EMPTY
        bucket = self.bucket(self.embedder.embed([text])[0])
        state = self.states.get(observation.identity.client_id)
        byte, bit = bucket >> 3, 1 << (bucket & 7)
        new = not state.seen[byte] & bit
        if new:
            state.seen[byte] |= bit
            state.set_bits += 1
            if state.set_bits >= self._rotate_at:
                state.seen[:] = bytes(len(state.seen))
                state.set_bits = 0
        state.ring = bit_ring_push(state.ring, new, self.window)
        state.n += 1
        if state.n < self.min_queries:
            return _EMPTY
        novelty = state.ring.bit_count() / self.window
        score = self.max_score * ramp(novelty, self.low, self.high)
        if score <= 0.0:
            return _EMPTY
        reasons = ("semantic_coverage",) if score >= 0.5 else ()
        return DetectorResult(self.name, score, reasons, {"novelty": round(novelty, 3)})

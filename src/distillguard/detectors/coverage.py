"""Coverage / distribution-shift detector (``coverage``).

**Signal.** A natural-data sweep (CopycatCNN/KnockoffNets style: real prompts replayed from a
corpus) is query by query indistinguishable from a user; what gives it away is the *window*: it
does not look like benign traffic as a whole, and it keeps covering new ground. Each prompt is
embedded with a cheap hashed embedding (:data:`~distillguard.detectors._text.DIM` dimensions of
signed hashed word unigrams and character 4-gram word prefixes, L2-normalised; see ``_text``)
and the detector keeps, per client, two window statistics:

* *distance to the benign reference* -- the linear-kernel MMD witness: the window mean (an
  exponential moving average, effective window ``2/alpha``) of ``<phi(x), mu_R>/|mu_R|``,
  where ``mu_R`` is the mean embedding of a benign reference sample (shipped as package data:
  a few hundred varied natural requests; replace it with your own traffic via ``reference``).
  Under the null (the client's prompts drawn like the reference) that mean is approximately
  normal with the reference's mean and ``sigma_R * sqrt(alpha / (2 - alpha))``; the detector
  turns it into a one-sided z statistic. ``atypical`` ramps from ``z_low`` to ``z_high``.
* *coverage growth* -- CAP-style random-hyperplane LSH: 11 sign bits of sparse random
  projections of the embedding (a comparison of two coordinates each) give one of 2,048
  buckets; the share of the client's last ``window`` queries that landed in a bucket it had
  never used before. A person circles a few topics; a sweep keeps opening new buckets.
  ``growth`` ramps from ``growth_low`` to ``growth_high``.

The score is ``atypical * growth`` (both must hold: a diverse but typical user, or a focused
user from an unusual domain, stays low), from ``min_requests`` queries on, capped at
``max_score``: a natural-data sweep can be slowed (throttle, degrade) on this evidence alone,
blocking needs another detector or an operator's lower cap.

**Anchor.** LabRAI, "An Embarrassingly Simple Detector for Model Extraction Attacks in LLM API
Traffic" (multi-bandwidth MMD of a 1,500-query window against benign reference traffic, window
FPR 0.003, TPR 1.00) and the CAP coverage monitor ("Stealing and Defending the Ends of LLMs",
random-hyperplane LSH into 2,048 buckets). Here the MMD is linear-kernel and streaming (O(1)
per query instead of O(window x reference)), which detects mean shift only.

**Cost.** The embedding reads at most 48 words of the prompt (fixed cost), then one 32-term
dot product, 11 comparisons and one EMA update of a 32-float mean. State: a 2,048-bit bitmap,
a 32-float mean and a few numbers (~700 bytes per client).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from importlib import resources
from operator import mul

from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates, bit_ring_push
from ._text import DIM, embed_text, features

__all__ = ["CoverageDetector", "load_reference"]

_BITS = 11
_BUCKETS = 1 << _BITS
_EMPTY = DetectorResult("coverage", 0.0)


def load_reference() -> list[str]:
    """The built-in benign reference prompts (package data ``detectors/data/benign_prompts.txt``)."""
    text = resources.files("distillguard.detectors").joinpath("data/benign_prompts.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class _State:
    __slots__ = ("ema", "fresh", "n", "seen")

    def __init__(self) -> None:
        self.seen = bytearray(_BUCKETS // 8)
        self.fresh = 0
        self.ema = 0.0
        self.n = 0


class CoverageDetector:
    """Scores how far a client's window drifts from benign traffic while covering new ground.

    Args:
        reference: benign prompts defining the reference distribution (the built-in sample when
            ``None``); at least 50.
        alpha: the EMA weight of one query (effective window ``2 / alpha``).
        window: queries over which coverage growth is measured.
        min_requests: no score before this many text queries from the client.
        z_low: the z statistic at which ``atypical`` starts rising.
        z_high: the z statistic at which ``atypical`` reaches 1.
        growth_low: the new-bucket share at which ``growth`` starts rising.
        growth_high: the new-bucket share at which ``growth`` reaches 1.
        max_score: the highest score coverage alone can give.
        seed: the seed of the LSH projections.
        max_clients: the cap on tracked clients.
    """

    name = "coverage"

    def __init__(
        self,
        *,
        reference: Iterable[str] | None = None,
        alpha: float = 1 / 32,
        window: int = 64,
        min_requests: int = 64,
        z_low: float = 6.0,
        z_high: float = 12.0,
        growth_low: float = 0.5,
        growth_high: float = 0.85,
        max_score: float = 0.8,
        seed: int = 20240601,
        max_clients: int = 50_000,
    ) -> None:
        check_range("alpha", alpha, 1e-4, 0.5)
        check_range("window", window, 8, 1024)
        check_range("min_requests", min_requests, 1, 100_000)
        check_range("z_high", z_high, z_low, 1e6)
        check_range("growth_high", growth_high, growth_low, 1.0)
        check_range("max_score", max_score, 0.0, 1.0)
        texts = list(load_reference() if reference is None else reference)
        vectors = [v for v in map(embed_text, texts) if any(v)]
        if len(vectors) < 50:
            from ..errors import ConfigurationError

            raise ConfigurationError("coverage reference needs at least 50 non-empty prompts")
        mu = [math.fsum(col) / len(vectors) for col in zip(*vectors, strict=True)]
        norm = math.sqrt(math.fsum(m * m for m in mu)) or 1.0
        self.direction: tuple[float, ...] = tuple(m / norm for m in mu)
        sims = [sum(map(mul, v, self.direction)) for v in vectors]
        self.ref_mean = math.fsum(sims) / len(sims)
        self.ref_std = math.sqrt(math.fsum((s - self.ref_mean) ** 2 for s in sims) / (len(sims) - 1)) or 1e-6
        rng = random.Random(seed)
        pairs = (rng.sample(range(DIM), 2) for _ in range(_BITS))
        self.pairs: tuple[tuple[int, int], ...] = tuple((a, b) for a, b in pairs)
        self.alpha = alpha
        self._z_scale = 1.0 / (self.ref_std * math.sqrt(alpha / (2.0 - alpha)))
        self.window = window
        self.min_requests = min_requests
        self.z_low, self.z_high = z_low, z_high
        self.growth_low, self.growth_high = growth_low, growth_high
        self.max_score = max_score
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def bucket(self, vec: Sequence[float]) -> int:
        """The LSH bucket (0..2047) of an embedding."""
        code = 0
        for a, b in self.pairs:
            code = (code << 1) | (vec[a] > vec[b])
        return code

    def score(self, observation: Observation) -> DetectorResult:
        """Update the client's window statistics with the query and score them."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        feats = features(query)
        vec = feats.embedding
        if not any(vec):
            return _EMPTY
        state = self.states.get(observation.identity.client_id)
        sim = sum(map(mul, vec, self.direction))
        alpha = self.alpha
        n = state.n
        state.ema = sim if n == 0 else state.ema + alpha * (sim - state.ema)
        content = feats.content
        code = (min(content) if content else self.bucket(vec) + 0x10000) & (_BUCKETS - 1)
        byte, bit = code >> 3, 1 << (code & 7)
        seen = state.seen
        new = not seen[byte] & bit
        if new:
            seen[byte] |= bit
        state.fresh = bit_ring_push(state.fresh, new, self.window)
        state.n = n = n + 1
        count = n if n < self.window else self.window
        growth = state.fresh.bit_count() / count
        z = (self.ref_mean - state.ema) * self._z_scale
        signals = {"z": z, "growth": growth, "requests": float(n)}
        if n < self.min_requests:
            return DetectorResult(self.name, 0.0, (), signals)
        score = ramp(z, self.z_low, self.z_high) * ramp(growth, self.growth_low, self.growth_high)
        score *= self.max_score
        return DetectorResult(self.name, score, ("distribution_shift",) if score > 0.0 else (), signals)

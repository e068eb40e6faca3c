"""Coverage / distribution-shift detector (``coverage``).

**Signal.** A natural-data sweep (CopycatCNN/KnockoffNets style: real prompts replayed from a
corpus) is query by query indistinguishable from a user; what gives it away is the *window*: it
does not look like benign traffic as a whole, and it keeps covering new ground. Each prompt is
reduced to a cheap hashed bag (:data:`~distillguard.detectors._text.DIM` signed dimensions of
hashed word unigrams and character 4-gram word prefixes, from at most 32 + 8 sampled words;
see ``_text``) and the detector keeps, per client, two window statistics:

* *distance to the benign reference* -- the linear-kernel MMD witness: the window mean (an
  exponential moving average, effective window ``2/alpha``) of the projection of each prompt's
  bag (scaled by ``1/sqrt(words)``) on ``mu_R/|mu_R|``, where ``mu_R`` is the mean embedding of
  a benign reference sample (shipped as package data: a few hundred varied natural requests;
  pass your own traffic as ``reference``). Under the null (the client's prompts drawn like the
  reference) that mean is approximately normal with the reference's mean and
  ``sigma_R * sqrt(alpha / (2 - alpha))``; the detector turns it into a one-sided z statistic.
  ``atypical`` ramps from ``z_low`` to ``z_high``. Because a fixed reference cannot describe
  every deployment (another language, another domain), the detector also learns the *live
  population's* null: exponential moving mean and variance of the same projection over the
  queries of clients that do not score here (``population_alpha``, effective window ~2,000
  queries). After ``population_warmup`` queries, z is the smaller of the two (atypical must hold
  against the reference *and* against the population): a deployment whose users all write
  Italian stops looking atypical, a sweep unlike both still does.
* *coverage growth* -- CAP-style LSH coverage, with MinHash as the LSH: a prompt's bucket is
  its smallest content-word hash modulo 2,048 (two prompts share it with probability equal to
  the Jaccard similarity of their content words); the share of the client's last ``window``
  queries that landed in a bucket it had never used before. A person circles a few topics and
  reuses their words; a sweep keeps opening new buckets. ``growth`` ramps from ``growth_low``
  to ``growth_high``.

The score is ``atypical * growth`` (both must hold: a diverse but typical user, or a focused
user from an unusual domain, stays low), from ``min_requests`` queries on, capped at
``max_score`` (0.8): a natural-data sweep can be slowed (throttle, degrade) on this evidence
alone; blocking needs another detector or an operator's higher cap.

**Anchor.** LabRAI, "An Embarrassingly Simple Detector for Model Extraction Attacks in LLM API
Traffic" (multi-bandwidth MMD of a 1,500-query window against benign reference traffic, window
FPR 0.003, TPR 1.00) and the CAP coverage monitor ("Stealing and Defending the Ends of LLMs",
random-hyperplane LSH into 2,048 buckets). Here the MMD is linear-kernel and streaming (O(1)
per query instead of O(window x reference)): it detects a shift of the mean embedding only, and
the hashed bag is lexical, not semantic.

**Cost.** At most 40 table look-ups per prompt (fixed cost, whatever the prompt size), one
EMA update, one bit test. State: a 2,048-bit bitmap and a few numbers (~400 bytes per client).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from importlib import resources

from ..errors import ConfigurationError
from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import _TEXT_KINDS, EMBED_WORDS, TextFeatures, features

__all__ = ["CoverageDetector", "load_reference"]

_BUCKETS = 2048
_INV_SQRT = (0.0, *(1.0 / math.sqrt(n) for n in range(1, EMBED_WORDS + EMBED_WORDS // 4 + 1)))
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
        population_warmup: after this many scored queries, the z statistic is also taken
            against the live population of clients (see the module docstring), and the smaller
            of the two is used; ``0`` disables.
        population_alpha: the EMA weight of one query in the population statistics.
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
        population_warmup: int = 2000,
        population_alpha: float = 1e-3,
        max_clients: int = 50_000,
    ) -> None:
        check_range("alpha", alpha, 1e-4, 0.5)
        check_range("window", window, 8, 1024)
        check_range("min_requests", min_requests, 1, 100_000)
        check_range("z_high", z_high, z_low, 1e6)
        check_range("growth_high", growth_high, growth_low, 1.0)
        check_range("max_score", max_score, 0.0, 1.0)
        texts = list(load_reference() if reference is None else reference)
        feats = [f for f in map(TextFeatures, texts) if f.codes]
        if len(feats) < 50:
            raise ConfigurationError("coverage reference needs at least 50 non-empty prompts")
        vectors = [f.embedding for f in feats]
        mu = [math.fsum(col) / len(vectors) for col in zip(*vectors, strict=True)]
        norm = math.sqrt(math.fsum(m * m for m in mu)) or 1.0
        direction = [m / norm for m in mu]
        self.table: tuple[float, ...] = (*direction, *(-d for d in direction))
        sims = [self.similarity(f.codes) for f in feats]
        self.ref_mean = math.fsum(sims) / len(sims)
        self.ref_std = math.sqrt(math.fsum((v - self.ref_mean) ** 2 for v in sims) / (len(sims) - 1)) or 1e-6
        self.alpha = alpha
        self._z_scale = 1.0 / (self.ref_std * math.sqrt(alpha / (2.0 - alpha)))
        self.window = window
        self._mask = (1 << window) - 1
        self.min_requests = min_requests
        self.z_low, self.z_high = z_low, z_high
        self.growth_low, self.growth_high = growth_low, growth_high
        self.max_score = max_score
        check_range("population_warmup", population_warmup, 0, 1 << 40)
        check_range("population_alpha", population_alpha, 1e-7, 0.1)
        self.population_warmup = population_warmup
        self.population_alpha = population_alpha
        self._client_factor = math.sqrt(alpha / (2.0 - alpha))
        self.pop_n = 0
        self.pop_mean = self.ref_mean
        self.pop_sq = self.ref_std**2 + self.ref_mean**2
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def similarity(self, codes: list[int]) -> float:
        """The projection of a prompt's hashed bag (its :attr:`TextFeatures.codes`, scaled by
        ``1/sqrt(len)``) on the reference mean direction."""
        return sum(map(self.table.__getitem__, codes)) * _INV_SQRT[len(codes)]

    def score(self, observation: Observation) -> DetectorResult:
        """Update the client's window statistics with the query and score them."""
        query = observation.query
        if not query.text or query.kind not in _TEXT_KINDS:
            return _EMPTY
        feats = features(query)
        codes = feats.codes
        if not codes:
            return _EMPTY
        state = self.states.get(observation.identity.client_id)
        sim = sum(map(self.table.__getitem__, codes)) * _INV_SQRT[len(codes)]
        alpha = self.alpha
        n = state.n
        state.ema = sim if n == 0 else state.ema + alpha * (sim - state.ema)
        content = feats.content
        code = (min(content) if content else min(feats.hashes)) & (_BUCKETS - 1)
        byte, bit = code >> 3, 1 << (code & 7)
        seen = state.seen
        new = not seen[byte] & bit
        if new:
            seen[byte] |= bit
        state.fresh = ((state.fresh << 1) | new) & self._mask
        state.n = n = n + 1
        count = n if n < self.window else self.window
        growth = state.fresh.bit_count() / count
        z = (self.ref_mean - state.ema) * self._z_scale
        pop_mean = self.pop_mean
        if self.population_warmup and self.pop_n >= self.population_warmup:
            pop_std = math.sqrt(max(self.pop_sq - pop_mean * pop_mean, 1e-12))
            z = min(z, (pop_mean - state.ema) / (pop_std * self._client_factor))
        if n < self.min_requests or z <= self.z_low or growth <= self.growth_low:
            # only clients that do not score feed the population null
            a = self.population_alpha
            self.pop_mean = pop_mean + a * (sim - pop_mean)
            self.pop_sq += a * (sim * sim - self.pop_sq)
            self.pop_n += 1
            return _EMPTY
        score = ramp(z, self.z_low, self.z_high) * ramp(growth, self.growth_low, self.growth_high)
        signals = {"z": z, "growth": growth, "requests": float(n)}
        return DetectorResult(self.name, score * self.max_score, ("distribution_shift",), signals)

"""Coverage detector (``coverage``): natural-data sweeps by their vocabulary novelty.

**Signal.** A natural-data sweep (CopycatCNN/KnockoffNets for text: real prompts replayed from
a corpus, each once) is query by query indistinguishable from a user, and its *mean* embedding
is the corpus's mean, i.e. the benign users' mean. What gives it away is that it never comes
back: a person circles a few topics, asks follow-ups, pastes their own material again and
reuses their own words; a sweep keeps spreading over the corpus, so a large share of every
prompt's words are words the client has never used before.

The detector keeps, per client, a 4,096-bit Bloom filter (one hash) of the *content* words it
has sent (``_text``: words not among the common English function and instruction words; for
other languages their own function words count as content, but they recur, so they are never
novel for long). For each prompt it reads at most ``sample`` of its distinct content words and
counts the share not yet in the filter (then adds them); a prompt with no content word (a
follow-up such as "why?") reads 0. ``novelty`` is the exponential moving average of that share
(``alpha``, effective window ``2 / alpha - 1`` = 255 prompts), from zero, so it starts low.

The score ramps with ``novelty`` from ``low`` to ``high``, from ``min_requests`` text queries
on, capped at ``max_score`` (0.8): a sweep can be flagged, throttled and degraded on this
evidence alone; blocking needs another detector (or an operator's higher cap).

The statistic is the client against its own history: no reference sample, no cross-client
state, nothing language-specific beyond the list of English function words.

**Saturation.** As the filter fills, new words are read as seen with probability equal to its
fill, so a long sweep's novelty dips before each clear: a filter holding ``rotate_bits`` set bits
(half of it: ~2,800 distinct words) is cleared; for the next ``refill``
(64) prompts the filter refills with the client's current vocabulary and ``novelty`` is held at
its last value (a sweep stays flagged, a benign user is not scored on an empty filter).

**Calibration.** The benign null of the detection benchmark (``benchmarks/coverage_null.py``):
the highest ``novelty`` any benign client reached after 256 queries, tuning and holdout
populations (other languages, power users sending up to 400 varied requests a day, legitimate
classifier users, jailbreak replayers), is 0.35; every single-client coverage sweep over the
benchmark's corpora reached at least 0.43. ``low`` and ``high`` (0.35, 0.43) put the flag level
(0.5 = ``max_score`` x 0.625) at novelty 0.40.

**Anchor.** LabRAI, "An Embarrassingly Simple Detector for Model Extraction Attacks in LLM API
Traffic" (multi-bandwidth MMD of 1,500-query windows against benign traffic, window FPR 0.003,
TPR 1.00) and the CAP coverage monitor ("Stealing and Defending the Ends of LLMs": LSH buckets
of embeddings, coverage growth). This is coverage growth measured on the client's vocabulary
rather than on 2,048 embedding buckets, with the client's own history as the reference.

**Limits.** A sweep mixed into a real user's traffic at 5-25% hardly moves the novelty of the
whole stream (measured in ``docs/detection.md``); a heavy user whose work is genuinely varied
(many unrelated pasted documents) can reach the sweep's novelty, hence the cap below the block
level; an attacker who interleaves each corpus prompt with re-used vocabulary dilutes it.

**Cost.** At most ``sample`` (24) bit tests per prompt over the shared content-word set, one EMA
update. State: a 512-byte filter and a few numbers (~650 bytes per client). Until it has 128 set
bits (the client's first few prompts) the filter is kept as the list of its set bits, two bytes
each (~150 bytes for a client seen once); the bits, and so the scores, are the same.
"""

from __future__ import annotations

from importlib import resources
from itertools import islice

from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import features

__all__ = ["CoverageDetector", "load_reference"]

_BITS = 4096
_DENSE = _BITS // 8
_SPARSE_MAX = 2 * 128  # a sparse filter turns dense past 128 set bits (256 of its 512 bytes)
_EMPTY = DetectorResult("coverage", 0.0)
# A bit ``k`` of a sparse filter is two bytes, ``0x80 | k >> 6`` then ``k & 63``: a search can
# only match at an even offset (no first byte is below 0x80, no second one above 0x3F).
_CODES = [bytes((0x80 | k >> 6, k & 63)) for k in range(_BITS)]


def load_reference() -> list[str]:
    """The built-in benign reference prompts (package data ``detectors/data/benign_prompts.txt``:
    a few hundred varied natural requests; used by the campaign detector's benign null)."""
    text = resources.files("distillguard.detectors").joinpath("data/benign_prompts.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class _State:
    __slots__ = ("bits", "hold", "n", "novelty", "words")

    def __init__(self) -> None:
        # The Bloom filter of content words: while it has few set bits, the list of them (two
        # bytes each, see ``_CODES``; a client seen once holds ~50 bytes), then 512 bytes.
        self.words = bytearray()
        self.bits = 0  # set bits in ``words``
        self.novelty = 0.0
        self.n = 0
        self.hold = 0  # prompts left during which a refilling filter does not update novelty


class CoverageDetector:
    """Scores how much of a client's vocabulary keeps being new (a sweep over a corpus).

    Args:
        alpha: the EMA weight of one prompt (effective window ``2 / alpha - 1``).
        sample: at most this many distinct content words of a prompt are read.
        min_requests: no score before this many text queries from the client.
        low: the novelty at which the score starts rising.
        high: the novelty at which the score reaches ``max_score``.
        max_score: the highest score coverage alone can give.
        rotate_bits: the filter is cleared once this many of its 4,096 bits are set.
        refill: prompts after a clear during which novelty is held at its last value.
        max_clients: the cap on tracked clients.
    """

    name = "coverage"
    shares_state = True

    def __init__(
        self,
        *,
        alpha: float = 1 / 128,
        sample: int = 24,
        min_requests: int = 256,
        low: float = 0.35,
        high: float = 0.43,
        max_score: float = 0.8,
        rotate_bits: int = _BITS // 2,
        refill: int = 64,
        max_clients: int = 50_000,
    ) -> None:
        check_range("alpha", alpha, 1e-4, 0.5)
        check_range("sample", sample, 1, 1024)
        check_range("min_requests", min_requests, 1, 100_000)
        check_range("low", low, 0.0, 1.0)
        check_range("high", high, low + 1e-6, 1.0)
        check_range("max_score", max_score, 0.0, 1.0)
        check_range("rotate_bits", rotate_bits, 64, _BITS)
        check_range("refill", refill, 0, 100_000)
        self.alpha = alpha
        self.sample = sample
        self.min_requests = min_requests
        self.low, self.high = low, high
        self.max_score = max_score
        self.rotate_bits = rotate_bits
        self.refill = refill
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Update the client's vocabulary filter and novelty with the query and score them."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        feats = features(query)
        if not feats.hashes:
            return _EMPTY
        state = self.states.get(observation.identity.client_id)
        words = state.words
        content = feats.content
        read = min(len(content), self.sample)
        fresh = 0
        if len(words) == _DENSE:
            for h in islice(content, read):
                k = (h >> 7) & (_BITS - 1)
                value = words[k >> 3]
                bit = 1 << (k & 7)
                if not value & bit:
                    words[k >> 3] = value | bit
                    fresh += 1
        else:
            for h in islice(content, read):
                code = _CODES[(h >> 7) & (_BITS - 1)]
                if code not in words:
                    words += code
                    fresh += 1
            if len(words) > _SPARSE_MAX:
                state.words = _dense(words)
        state.bits += fresh
        share = fresh / read if read else 0.0
        if state.hold:
            state.hold -= 1
        else:
            state.novelty += self.alpha * (share - state.novelty)
        if state.bits >= self.rotate_bits:
            state.words = bytearray()
            state.bits = 0
            state.hold = self.refill
        state.n = n = state.n + 1
        novelty = state.novelty
        if n < self.min_requests or novelty <= self.low:
            return _EMPTY
        score = ramp(novelty, self.low, self.high) * self.max_score
        signals = {"novelty": novelty, "requests": float(n)}
        return DetectorResult(self.name, score, ("vocabulary_novelty",), signals)


def _dense(sparse: bytearray) -> bytearray:
    """The 512-byte filter with the bits of a sparse one."""
    words = bytearray(_DENSE)
    for i in range(0, len(sparse), 2):
        k = (sparse[i] & 0x3F) << 6 | sparse[i + 1]
        words[k >> 3] |= 1 << (k & 7)
    return words

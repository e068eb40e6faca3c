"""Scripted-sweep detector (``scripted_sweep``): new ground covered at a machine cadence.

**Signal.** A coverage campaign splits a natural-data sweep over many accounts that each stay
far below the 256 queries the ``coverage`` detector needs (24 accounts x 200 queries in the
detection benchmark), and every one of its queries is, on its own, a user's. What one account
of it does show within a couple of dozen requests is the conjunction of three things a person
rarely does together:

* *a machine cadence*: the spread (standard deviation) of the logarithm of the last ``window``
  (16) inter-arrival gaps is small. A script on a timer or a rate budget sends at a steady
  interval (log-gap spread ~0.06 for +-10% jitter); people read, type, pause and sleep
  (lognormal conversational gaps have a spread near 1, Poisson traffic 1.28). Gaps under 1 ms
  (simultaneous requests), out-of-order and non-finite times are skipped: concurrency is not a
  cadence, and a burst cannot make a client look regular. The log makes the
  test independent of the rate (a request a minute or one an hour), which is what the
  ``volume_timing`` detector cannot be: it weighs regularity by volume, because a regular
  low-volume client on its own is only a batch job;
* *no conversation*: none of the last ``window`` requests carries a conversation history (a chat
  body whose only non-system message is the prompt);
* *new ground*: the prompts do not repeat one another: of the first ``sample`` (4) content words
  of each prompt in the last full lap of ``window`` prompts (``_text``: words outside the common
  function and instruction words), at least ``min_diversity`` (half) are distinct. This keeps a
  health check or a fixed prompt on a timer out.

The score ramps from 0 at a log-gap spread of ``spread_high`` (0.25) to ``max_score`` at
``spread_low`` (0.08), while the other two conditions hold; capped at ``max_score`` (0.7: flag
and throttle with the default risk policy, never degrade or block on this evidence alone).

**Calibration.** The detection benchmark's benign populations (tuning, holdout and both
calibration logs: 1,800 clients; conversational users, heavy users, jailbreak replayers,
classifier users; eight languages): over any 16 requests without history, the smallest log-gap
spread of a benign client is 0.37; every account of the coverage, template and hydra campaigns
stays below 0.05 from its 17th request on. ``spread_low``/``spread_high`` put the flag level
(0.5) at a spread of 0.13.

**Anchor.** Provider disclosures of distillation campaigns (Feb 2026: ~24,000 accounts, each
under its thresholds, caught by behavioural fingerprints including synchronised timing);
detection.md section 3 items 5, 7 and 8. Target: a campaign of >= 20 accounts flagged before
10% of its queries are served. An account is scorable from its ``window + 1``-th request: in the
benchmark's 24-account campaigns, after 7.9% of the campaign's queries.

**Limits.** An attacker who randomises the interval (Poisson or human-like gaps) evades it; the
other detectors must catch that one. A sweep mixed into a real user's own traffic inherits the
user's timing and is not caught here. A legitimate script that sends new content on a timer (a
feed summariser, an evaluation harness) is flagged; the cap keeps it from being blocked.

**Cost.** Per text request: the history check (one or two dict reads), one ``log`` and a few
float updates on the gap ring (its running sums are recomputed exactly once per lap, so they
never drift), ``sample`` content-word hashes stored in the word ring; once per lap, one ``set``
over the ring's 64 words. State: a 128-byte ring of 16-bit word hashes, a 64-byte ring of float32
log gaps (both made on the client's second request) and a few numbers: ~650 bytes per client
with Python's object overhead, ~250 for a client seen once.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from itertools import islice

from ..query import Query
from ._base import check_range
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import features

__all__ = ["ScriptedSweepDetector", "has_history"]

_MIN_GAP = 1e-3  # seconds; a shorter gap (simultaneous requests, concurrency) is not a cadence
_MAX_GAP = 1e9  # seconds; nor is a longer or non-finite one
_EMPTY = DetectorResult("scripted_sweep", 0.0)
_log = math.log
_NONE = array("H")  # shared, never written: a client's rings are made on its second request
_NO_GAPS = array("f")


def has_history(query: Query) -> bool:
    """Whether a chat request carries earlier turns (more than one non-system message)."""
    data = query.data
    if query.kind != "chat" or data is None:
        return False
    messages = data.get("messages")
    if not isinstance(messages, list) or len(messages) <= 1:
        return False
    if len(messages) > 2:
        return True
    first = messages[0]
    return not (isinstance(first, Mapping) and first.get("role") == "system")


class _State:
    __slots__ = ("diversity", "gaps", "history", "last", "n", "pos", "s1", "s2", "words")

    def __init__(self) -> None:
        self.words = _NONE  # 16-bit content-word hashes (ring), made on the client's second request
        self.gaps = _NO_GAPS  # float32 log inter-arrival gaps (ring), made with ``words``
        self.history = 0  # bit ring: which of the last ``window`` requests carried history
        self.last = math.nan  # timestamp of the previous request
        self.n = 0  # gaps seen
        self.pos = 0
        self.s1 = 0.0  # sum of the ring's log gaps
        self.s2 = 0.0  # sum of their squares
        self.diversity = 0.0  # distinct share of the word ring, as of the last full lap


class ScriptedSweepDetector:
    """Scores clients that keep sending new, standalone prompts at a machine-regular cadence.

    Args:
        window: how many recent requests (and gaps) are judged together.
        sample: how many content words of each prompt are kept for the diversity test.
        min_diversity: the share of distinct words among the window's kept words needed to score.
        spread_low: a log-gap spread at or below this gives ``max_score``.
        spread_high: a log-gap spread at or above this gives 0.
        max_score: the highest score this detector gives.
        max_clients: the cap on tracked clients.
    """

    name = "scripted_sweep"
    shares_state = True

    def __init__(
        self,
        *,
        window: int = 16,
        sample: int = 4,
        min_diversity: float = 0.5,
        spread_low: float = 0.08,
        spread_high: float = 0.25,
        max_score: float = 0.7,
        max_clients: int = 50_000,
    ) -> None:
        check_range("window", window, 4, 256)
        check_range("sample", sample, 1, 64)
        check_range("min_diversity", min_diversity, 0.0, 1.0)
        check_range("spread_low", spread_low, 0.0, 10.0)
        check_range("spread_high", spread_high, spread_low + 1e-6, 10.0)
        check_range("max_score", max_score, 0.0, 1.0)
        self.window = window
        self.sample = sample
        self.min_diversity = min_diversity
        self.spread_low, self.spread_high = spread_low, spread_high
        self.max_score = max_score
        self._history_mask = (1 << window) - 1
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Update the client's gap, history and word rings, and score them."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        state = self.states.get(observation.identity.client_id)
        window = self.window
        data = query.data
        messages = data.get("messages") if data is not None else None
        history = (
            type(messages) is list
            and len(messages) > 1
            and (len(messages) > 2 or has_history(query))  # two messages: a system prompt or not
        )
        state.history = ((state.history << 1) | history) & self._history_mask
        ts = observation.timestamp
        last = state.last
        gap = ts - last
        if not _MIN_GAP < gap < _MAX_GAP:  # not a gap of a cadence: skipped
            # a first, repeated or very late (finite) time moves the clock; an out-of-order or a
            # non-finite one leaves it as it was
            if (last != last or (gap >= 0.0 and gap - gap == 0.0)) and ts - ts == 0.0:
                state.last = ts
            return _EMPTY
        state.last = ts
        pos = state.pos
        sample = self.sample
        words = state.words
        if not words:  # the client's second request: its rings are made now
            words = state.words = array("H", bytes(2 * window * sample))
            state.gaps = array("f", bytes(4 * window))
        j = pos * sample
        end = j + sample
        for h in islice(features(query).content, sample):
            words[j] = (h & 0xFFFF) or 1  # 0 marks an empty slot
            j += 1
        while j < end:
            words[j] = 0
            j += 1
        gap = _log(gap)
        gaps = state.gaps
        old = gaps[pos]
        gaps[pos] = gap
        gap = gaps[pos]  # as stored (float32), so that the running sums match the ring
        pos += 1
        if pos == window:  # a lap: exact sums again, and the word ring's diversity
            pos = 0
            state.s1 = math.fsum(gaps)
            state.s2 = math.fsum(g * g for g in gaps)
            distinct = set(words)
            distinct.discard(0)
            kept = len(words) - words.count(0)
            state.diversity = len(distinct) / kept if kept else 0.0
        else:
            state.s1 += gap - old
            state.s2 += gap * gap - old * old
        state.pos = pos
        state.n = n = state.n + 1
        if n < window or state.history:
            return _EMPTY
        mean = state.s1 / window
        spread = math.sqrt(max(0.0, state.s2 / window - mean * mean))
        if spread >= self.spread_high or state.diversity < self.min_diversity:
            return _EMPTY
        level = min(1.0, (self.spread_high - spread) / (self.spread_high - self.spread_low))
        signals = {"log_gap_spread": spread, "diversity": state.diversity, "gap_seconds": math.exp(mean)}
        return DetectorResult(self.name, level * self.max_score, ("scripted_sweep",), signals)

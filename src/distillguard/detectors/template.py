"""Template-sweep detector (``template_sweep``).

**Signal.** Extraction and distillation scripts fill a fixed prompt template with varying slots
("Explain step by step how {X} works", "Translate '{Y}' into {Z}"). Each prompt is reduced to a
*slot-masked skeleton*: the sequence of its common words (function words and instruction words;
numbers, names and other rare words are the slots and drop out), hashed. A query *recurs* when
its skeleton already appears at least ``recur - 1`` times (5) in the client's window while its
full text is new (varying slots; exact repeats do not count): a person reusing one prompt with a
few questions stays under it, a sweep filling one template dozens of times does not. The score
ramps with the share of the window made of recurring queries, i.e. the share of the client's
traffic sitting on a few top skeletons. Skeletons with fewer than ``min_fixed`` words, and
prompts without any slot word, are ignored: short generic questions share skeletons by chance.

A skeleton changes with the common words *inside* the slots: a template whose slot is a whole
question ("... Question: {q}"), a phrase ("how to {subject}") or text in a language whose
function words are not in the common list gets a different skeleton for nearly every fill. The
fixed part of such a template still sits at the start or at the end of the prompt, so each
prompt also has two *anchors*: its first and its last ``anchor`` words (3; any words, so any
language), hashed. A query also recurs when one of its anchors already appears at least
``anchor_recur - 1`` times (11) in the window: three words collide far more often than a
whole skeleton (a person's batch of one short instruction over their own texts, "Fix the
grammar: ...", shares its head), so an anchor needs about twice the repetitions of a skeleton.

A sweep hidden in a heavy user's own traffic (one request in ten or twenty) never fills a
window of 64, so each recurring-eligible skeleton (the text new, enough common words and a slot)
also adds one to a *sustained count*: one of 128 saturating 8-bit counters chosen by the
skeleton's hash (from the client's 16th request on), all halved every ``sustained_every`` (128)
requests of the client and every ``sustained_halflife`` (12 hours). One skeleton sent once every
twenty requests holds ~12; a person's habitual phrasing ("can you write a {x} in Python?")
spread over their days, or chance collisions of a power user's varied prompts, stay at 8 or
below in the benchmark's 3,600 benign client-days. The score is at least ``ramp(count,
sustained_low, sustained_high)`` (8 and 16: the flag level 0.5 at 12). Templates whose slot is
a whole question have no stable skeleton and are not seen by this count.

Requests with ``max_tokens <= 4`` never count as recurring: a fixed-instruction classifier asking
for one label token is the commonest legitimate template workload, and a distillation sweep
harvests long completions (reasoning traces), not single tokens.

**Anchor.** Slot-masked fingerprints as in provider disclosures of distillation campaigns
("repeated templates", Feb 2026) and template-based query synthesis in extraction attacks
(Krishna et al. 2020; Carlini et al. 2024's fixed prompts). The measured SEAT-style baseline on
text is TPR 1.0 at 13.6% window FPR; the target here is every one-client sweep within 100
queries with no false positive.

**Cost.** One C-level ``filter`` over the word hashes (shared), three small tuple hashes, four
byte searches (``bytearray.count``/``find``) over at most ``4 * window`` bytes; one
``bytes.translate`` per halving of the sustained counts. State: one buffer of 16-bit hashes,
``window`` each of skeletons, texts and head and tail anchors (a chance match of 16 bits, about
one query in a thousand, adds one to a count that needs 5 or 11, or takes a new text for a
repeat), and a ``window``-bit ring: ~600 bytes per client at the default window of 64; the 128
sustained counters add 128 bytes to the buffer from the client's 16th request on.
"""

from __future__ import annotations

from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import features

__all__ = ["TemplateSweepDetector"]

_EMPTY = DetectorResult("template_sweep", 0.0)
_NONE16 = bytes(2)
_TAIL = 0x9E3779B9  # keeps a tail anchor from matching a head anchor of the same words
_BUCKETS = 128  # sustained skeleton counters per client (8 bits each)
_HALF = bytes(i // 2 for i in range(256))  # halves every counter in one ``translate``
_COUNT_FROM = 16  # the sustained counts start with the client's 16th request (none for a passer-by)


class _State:
    __slots__ = ("due", "flags", "n", "pos", "rings")

    def __init__(self, window: int) -> None:
        # three rings in one buffer (one object header, not three), searched as bytes within
        # their own range: the skeletons' and the texts' 16-bit hashes (``2 * window`` bytes
        # each), then the 16-bit head and tail anchors of each query (``4 * window``); from the
        # client's 16th request the ``_BUCKETS`` sustained skeleton counts follow
        self.rings = bytearray(8 * window)
        self.flags = 0
        self.n = 0
        self.pos = 0
        self.due = 0.0  # when the sustained counts are next halved by time


class TemplateSweepDetector:
    """Scores how much of a client's recent traffic recurs on a few prompt skeletons.

    Args:
        window: how many recent queries are kept.
        min_fixed: skeletons with fewer common words are ignored.
        recur: a skeleton recurs from its ``recur``-th occurrence in the window on.
        anchor: the words of a head or tail anchor (the first or last words of a prompt).
        anchor_recur: an anchor recurs from its ``anchor_recur``-th occurrence in the window on
            (more than ``recur``: a few words collide more often than a whole skeleton, and a
            person's own batch of one instruction over their texts is shorter than this).
        min_output: requests with ``max_tokens`` at or below this never count as recurring (a
            fixed-instruction classifier asking for one label token is the commonest
            legitimate template workload; distillation sweeps harvest long completions).
        min_requests: no score before this many text queries from the client.
        low: the recurring share at which the score starts rising.
        high: the recurring share at which the score reaches 1.
        sustained_every: the sustained skeleton counts are halved every this many requests...
        sustained_halflife: ...and every this many seconds.
        sustained_low: the sustained count of one skeleton at which the score starts rising.
        sustained_high: the sustained count at which the score reaches 1.
        max_clients: the cap on tracked clients.
    """

    name = "template_sweep"
    shares_state = True

    def __init__(
        self,
        *,
        window: int = 64,
        min_fixed: int = 5,
        recur: int = 6,
        anchor: int = 3,
        anchor_recur: int = 12,
        min_output: int = 4,
        min_requests: int = 12,
        low: float = 0.3,
        high: float = 0.6,
        sustained_every: int = 128,
        sustained_halflife: float = 43_200.0,
        sustained_low: int = 8,
        sustained_high: int = 16,
        max_clients: int = 50_000,
    ) -> None:
        check_range("window", window, 8, 1024)
        check_range("min_fixed", min_fixed, 1, 64)
        check_range("recur", recur, 2, window)
        check_range("anchor", anchor, 1, 32)
        check_range("anchor_recur", anchor_recur, 2, window)
        check_range("min_output", min_output, 0, 1 << 20)
        check_range("min_requests", min_requests, 1, window)
        check_range("low", low, 0.0, 1.0)
        check_range("high", high, low, 1.0)
        check_range("sustained_every", sustained_every, 8, 1 << 20)
        check_range("sustained_halflife", sustained_halflife, 60.0, 365 * 86_400.0)
        check_range("sustained_low", sustained_low, 1, 254)
        check_range("sustained_high", sustained_high, sustained_low + 1, 255)
        self.sustained_every = sustained_every
        self.sustained_halflife = sustained_halflife
        self.sustained_low = sustained_low
        self.sustained_high = sustained_high
        self.min_output = min_output
        self.window = window
        self._mask = (1 << window) - 1
        self.min_fixed = min_fixed
        self.recur = recur
        self.anchor = anchor
        self.anchor_recur = anchor_recur
        self.min_requests = min_requests
        self.low = low
        self.high = high
        self.states: LRUStates[_State] = LRUStates(lambda: _State(window), max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Record the query's skeleton and score the client's recurring-skeleton share."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        feats = features(query)
        skeleton = feats.skeleton
        state = self.states.get(observation.identity.client_id)
        rings = state.rings
        window = self.window
        texts, anchors, end = 2 * window, 4 * window, 8 * window  # where each ring starts
        text_key = ((feats.key & 0xFFFF) or 1).to_bytes(2, "little")
        skel_key = head = tail = _NONE16
        count = anchored = 0
        skel_hash = -1
        if rings.find(text_key, texts, anchors) < 0:
            hashes = feats.hashes
            if len(skeleton) >= self.min_fixed and len(skeleton) < len(hashes):
                skel_hash = (hash(skeleton) & 0xFFFFFFFF) or 1
                skel_key = ((skel_hash & 0xFFFF) or 1).to_bytes(2, "little")
                count = rings.count(skel_key, 0, texts)
            k = self.anchor
            if len(hashes) > k:
                head = ((hash(tuple(hashes[:k])) & 0xFFFF) or 1).to_bytes(2, "little")
                tail = (((hash(tuple(hashes[-k:])) ^ _TAIL) & 0xFFFF) or 1).to_bytes(2, "little")
                anchored = max(rings.count(head, anchors, end), rings.count(tail, anchors, end))
        pos = state.pos
        at = 2 * pos
        rings[at : at + 2] = skel_key
        rings[texts + at : texts + at + 2] = text_key
        at = anchors + 4 * pos
        rings[at : at + 2] = head
        rings[at + 2 : at + 4] = tail
        state.pos = pos + 1 if pos + 1 < window else 0
        budget = query.max_tokens
        long_output = budget is None or budget > self.min_output
        recurring = long_output and (count + 1 >= self.recur or anchored + 1 >= self.anchor_recur)
        state.flags = flags = ((state.flags << 1) | recurring) & self._mask
        state.n = n = state.n + 1
        eligible = long_output and skel_hash >= 0
        sustained = (
            self._sustained(state, observation.timestamp, skel_hash if eligible else -1)
            if len(rings) > end or (eligible and n >= _COUNT_FROM)
            else 0
        )
        seen = n if n < window else window
        share = flags.bit_count() / seen
        score = ramp(share, self.low, self.high) if n >= self.min_requests else 0.0
        held = ramp(sustained, self.sustained_low, self.sustained_high)
        if not (score or held):
            return _EMPTY
        signals = {
            "recurring_share": share,
            "skeleton_share": (count + 1) / seen if count else 0.0,
            "anchor_share": (anchored + 1) / seen if anchored else 0.0,
            "sustained_count": float(sustained),
        }
        if held > score:
            return DetectorResult(self.name, held, ("sustained_template",), signals)
        return DetectorResult(self.name, score, ("template_recurrence",), signals)

    def _sustained(self, state: _State, now: float, skel_hash: int) -> int:
        """Age the client's sustained skeleton counts (halved every ``sustained_every`` requests
        and every ``sustained_halflife`` seconds), count ``skel_hash`` (``-1``: nothing to count)
        and return its count."""
        rings = state.rings
        counts = 8 * self.window  # where the counts start
        if len(rings) == counts:  # a copy of the exact size (extending over-allocates)
            rings = state.rings = rings + bytes(_BUCKETS)
            state.due = now + self.sustained_halflife
        halvings = 1 if state.n % self.sustained_every == 0 else 0
        if now >= state.due:  # out-of-order timestamps (replays) never halve
            elapsed = int((now - state.due) // self.sustained_halflife) + 1
            state.due += elapsed * self.sustained_halflife
            halvings += elapsed
        if halvings:
            if halvings >= 8:
                rings[counts:] = bytes(_BUCKETS)
            else:
                for _ in range(halvings):
                    rings[counts:] = rings[counts:].translate(_HALF)
        if skel_hash < 0:
            return 0
        at = counts + skel_hash % _BUCKETS
        value = rings[at]
        if value < 255:
            rings[at] = value = value + 1
        return value

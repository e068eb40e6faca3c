"""Random-word detector (``word_salad``): queries made of words drawn at random.

**Signal.** The RANDOM queries of Krishna et al. (2020) are sequences of words drawn at random
from a vocabulary: no real data is needed, and they extract a fine-tuned model all the same.
Natural text, in any language, repeats words (Zipf's law: articles, particles, prepositions,
pronouns): a prompt of 16 words or more nearly always uses some word twice, and it is
punctuated. Words drawn at random from a vocabulary of thousands almost never repeat within one
prompt, and are strung together without punctuation. A prompt of at least ``min_words`` words
(16), of which at least ``distinct`` (95%) are distinct, with at most ``max_marks`` (1) ASCII
punctuation marks, is *unrepeated* (the words as the shared text pass splits them: lower case,
punctuation dropped). The score ramps with the share of unrepeated prompts among the client's
last ``window`` (64) text queries, from ``low`` (0.25) to ``high`` (0.5), from
``min_requests`` (32) text queries on, times ``max_score`` (0.7): the flag level 0.5 at a share
of about 0.41. Shorter prompts, and requests with ``max_tokens <= 4`` (a classifier app's fixed
instruction over a short text, asking for one label), count as not unrepeated.

On the detection benchmark's streams every random-word client (vocabularies of 2,000 and 8,400
words, prompts of 8 to 40 words, some capitalised questions) reaches a share of 0.73 or more
and is flagged at its 32nd query; the highest share of any benign client (power users pasting
varied text, seven other languages, jailbreak replayers, classifier apps) is 0.05 (0.38 without
the punctuation condition, which also guards languages whose words rarely repeat, such as
agglutinative ones). A client that only ever sends long unpunctuated lists of distinct keywords
would look the same, hence the cap: on this evidence alone a client is flagged and throttled,
never degraded or blocked.

**Anchor.** Krishna, Tomar, Parikh, Papernot, Iyyer, "Thieves on Sesame Street! Model
Extraction of BERT-based APIs" (ICLR 2020): RANDOM and WIKI queries; they note that such
nonsensical inputs are easy to spot but that detection can be evaded with natural (WIKI)
queries, which the ``coverage`` and ``scripted_sweep`` detectors look at.

**Cost.** One comparison and the size of the prompt's distinct-word set, which the shared text
pass builds for the content words anyway (:attr:`~distillguard.detectors._text.TextFeatures.
distinct`); for the rare long prompt without a repeated word, one ``bytes.translate`` to count
its punctuation; a ``window``-bit ring. State: ~150 bytes per client.
"""

from __future__ import annotations

from ._base import check_range, ramp
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import features

__all__ = ["WordSaladDetector"]

_EMPTY = DetectorResult("word_salad", 0.0)


class _State:
    __slots__ = ("flags", "n")

    def __init__(self) -> None:
        self.flags = 0  # one bit per recent text query: 1 when unrepeated
        self.n = 0


class WordSaladDetector:
    """Scores the share of a client's recent prompts whose words never repeat.

    Args:
        window: how many recent text queries are kept.
        min_words: prompts with fewer words never count as unrepeated.
        distinct: the share of distinct words at or above which a prompt is unrepeated.
        max_marks: prompts with more ASCII punctuation marks never count as unrepeated.
        min_output: requests with ``max_tokens`` at or below this never count.
        min_requests: no score before this many text queries from the client.
        low: the unrepeated share at which the score starts rising.
        high: the unrepeated share at which the score reaches ``max_score``.
        max_score: the highest score this detector gives.
        max_clients: the cap on tracked clients.
    """

    name = "word_salad"
    shares_state = True

    def __init__(
        self,
        *,
        window: int = 64,
        min_words: int = 16,
        distinct: float = 0.95,
        max_marks: int = 1,
        min_output: int = 4,
        min_requests: int = 32,
        low: float = 0.25,
        high: float = 0.5,
        max_score: float = 0.7,
        max_clients: int = 50_000,
    ) -> None:
        check_range("window", window, 8, 1024)
        check_range("min_words", min_words, 4, 10_000)
        check_range("distinct", distinct, 0.5, 1.0)
        check_range("max_marks", max_marks, 0, 1 << 20)
        check_range("min_output", min_output, 0, 1 << 20)
        check_range("min_requests", min_requests, 1, window)
        check_range("low", low, 0.0, 1.0)
        check_range("high", high, low, 1.0)
        check_range("max_score", max_score, 0.0, 1.0)
        self.window = window
        self._mask = (1 << window) - 1
        self.min_words = min_words
        self.distinct = distinct
        self.max_marks = max_marks
        self.min_output = min_output
        self.min_requests = min_requests
        self.low = low
        self.high = high
        self.max_score = max_score
        self.states: LRUStates[_State] = LRUStates(_State, max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Record whether the prompt repeats a word; score the client's unrepeated share."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        budget = query.max_tokens
        unrepeated = False
        if budget is None or budget > self.min_output:
            feats = features(query)
            words = len(feats.words)
            unrepeated = (
                words >= self.min_words
                and feats.distinct >= self.distinct * words
                and feats.punctuation <= self.max_marks
            )
        state = self.states.get(observation.identity.client_id)
        state.flags = flags = ((state.flags << 1) | unrepeated) & self._mask
        state.n = n = state.n + 1
        if n < self.min_requests:
            return _EMPTY
        share = flags.bit_count() / (n if n < self.window else self.window)
        if share <= self.low:
            return _EMPTY
        score = self.max_score * ramp(share, self.low, self.high)
        return DetectorResult(self.name, score, ("unrepeated_words",), {"unrepeated_share": share})

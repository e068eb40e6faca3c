"""Keyed lexical watermarks in served text, and the test that proves a copy learnt them.

A model distilled from an API's answers learns their word choices. The watermark makes some of
those choices secret: among interchangeable words (``often`` / ``frequently`` / ``commonly``,
``furthermore`` / ``moreover`` / ``additionally``...), the answer always uses the one that a keyed
hash of the *previous word* names. Each distinct context (a group and the previous
word) is one trial: in text that never went through the watermark the named word turns up in
about ``1 / len(group)`` of the contexts, whatever the writer's habits (the key names a word
per context at random); in marked text, and in text from a model trained on enough of it, far
more often. :meth:`Watermark.evidence` counts the
trials in a sample of a suspect model's outputs and gives the one-sided binomial z-score and
p-value. This is the lexical watermark of He et al., "Protecting Intellectual Property of
Language Generation APIs with Lexical Watermark" (AAAI 2022), conditioned on the context like
CATER (He et al., NeurIPS 2022) so that the marked text keeps the overall word frequencies of
the original.

**Marking** (:meth:`Watermark.mark`, and :class:`StreamMarker` for a stream of pieces) only
swaps whole words of the groups below, keeps their case (``Often`` -> ``Frequently``), and
leaves everything else byte for byte. After ``a`` / ``an`` a word is not swapped for one that
starts with a vowel where it did not (or the reverse), and such places are not trials either.

**Strength and limits.** The groups are common in explanatory prose but not in every answer:
a few hundred answers of a suspect model are needed (``docs/watermark.md`` gives figures). A
copy that paraphrases its training data, or a suspect that is a different model altogether,
carries no mark; the key must stay secret (with it anyone can unmark text or forge the test).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .errors import ConfigurationError

__all__ = ["GROUPS", "Evidence", "StreamMarker", "Watermark"]

GROUPS: tuple[tuple[str, ...], ...] = (
    ("often", "frequently", "commonly"),
    ("usually", "typically", "generally"),
    ("mainly", "mostly", "primarily"),
    ("perhaps", "maybe", "possibly"),
    ("almost", "nearly"),
    ("completely", "entirely", "totally"),
    ("quickly", "rapidly", "swiftly"),
    ("immediately", "instantly"),
    ("certainly", "definitely"),
    ("precisely", "exactly"),
    ("furthermore", "moreover", "additionally"),
    ("therefore", "consequently"),
    ("nevertheless", "nonetheless"),
    ("large", "big"),
    ("huge", "enormous", "immense"),
    ("crucial", "vital", "essential"),
    ("several", "multiple"),
    ("choose", "select"),
    ("chooses", "selects"),
    ("choosing", "selecting"),
    ("obtain", "acquire"),
    ("obtains", "acquires"),
    ("obtaining", "acquiring"),
    ("modify", "alter"),
    ("modifies", "alters"),
    ("modifying", "altering"),
    ("beautiful", "lovely"),
    ("wonderful", "marvelous"),
    ("example", "instance"),
    ("examples", "instances"),
    ("rapid", "swift"),
    ("assume", "suppose"),
    ("especially", "particularly"),
    ("significantly", "substantially", "considerably"),
    ("extremely", "incredibly"),
    ("rarely", "seldom"),
    ("basically", "essentially"),
    ("obviously", "evidently"),
    ("unfortunately", "regrettably"),
    ("fortunately", "luckily"),
    ("correctly", "properly"),
)
"""The interchangeable words (each word in one group), lower case."""

_WORD = re.compile(r"[A-Za-z]+")
_TAIL = re.compile(r"[A-Za-z]+\Z")
_VOWELS = frozenset("aeiou")


@dataclass(frozen=True, slots=True)
class Evidence:
    """What :meth:`Watermark.evidence` found.

    Attributes:
        trials: distinct contexts (a group word's group and the word before it) in the sample.
        hits: those that were the word the key names.
        expected: the hits expected in unmarked text (the sum of ``1 / len(group)``).
        z: ``(hits - expected) / sqrt(variance)``; 0 with no trial.
        p_value: the one-sided probability of at least ``z`` in unmarked text (normal
            approximation of the binomial sum).
    """

    trials: int
    hits: int
    expected: float
    z: float
    p_value: float


class Watermark:
    """A keyed lexical watermark.

    Args:
        key: the secret (at least 16 bytes).
        groups: the interchangeable words (default :data:`GROUPS`); each word in one group.

    Raises:
        ConfigurationError: for a short key, or a word in two groups.
    """

    def __init__(self, key: bytes | str, groups: Sequence[Sequence[str]] = GROUPS) -> None:
        secret = key.encode() if isinstance(key, str) else bytes(key)
        if len(secret) < 16:
            raise ConfigurationError("the watermark key must be at least 16 bytes")
        table: dict[str, tuple[str, ...]] = {}
        for group in groups:
            words = tuple(w.lower() for w in group)
            if len(words) < 2 or not all(w.isalpha() and w.isascii() for w in words):
                raise ConfigurationError(f"a watermark group needs two or more words: {group!r}")
            for word in words:
                if word in table:
                    raise ConfigurationError(f"{word!r} is in two watermark groups")
                table[word] = words
        self._groups = table
        self._key = secret
        self._named = lru_cache(maxsize=65536)(self._name)

    def _name(self, group: tuple[str, ...], previous: str) -> str:
        digest = hmac.new(self._key, f"{group[0]}|{previous}".encode(), hashlib.sha256).digest()
        return group[int.from_bytes(digest[:8], "big") % len(group)]

    def _trial(self, word: str, previous: str) -> tuple[tuple[str, ...], str] | None:
        """The group of ``word`` and the word the key names after ``previous`` (both lower
        case), or ``None`` where this is not a trial."""
        group = self._groups.get(word)
        if group is None or not previous:
            return None
        if previous in ("a", "an") and len({w[0] in _VOWELS for w in group}) > 1:
            return None  # the article would have to change
        return group, self._named(group, previous)

    def mark(self, text: str) -> str:
        """``text`` with each group word replaced by the word the key names."""
        marker = StreamMarker(self)
        return marker.feed(text) + marker.flush()

    def evidence(self, texts: Iterable[str]) -> Evidence:
        """Count the trials and hits in ``texts`` (a suspect model's outputs).

        Each context (a group and the previous word) counts once, at its first occurrence:
        the word the key names in a context is a fresh uniform draw per context, so in text
        that never went through the watermark these trials are independent, whatever the
        writer's habits ("for example" a thousand times is one trial, not a thousand)."""
        trials = hits = 0
        expected = variance = 0.0
        seen: set[tuple[str, str]] = set()
        for text in texts:
            previous = ""
            for match in _WORD.finditer(text):
                word = match.group().lower()
                found = self._trial(word, previous)
                context = (found[0][0], previous) if found is not None else None
                if found is not None and context not in seen:
                    seen.add(context)  # type: ignore[arg-type]
                    group, named = found
                    p = 1.0 / len(group)
                    trials += 1
                    hits += word == named
                    expected += p
                    variance += p * (1.0 - p)
                previous = word
        if variance == 0.0:
            return Evidence(trials, hits, expected, 0.0, 1.0)
        z = (hits - expected) / math.sqrt(variance)
        return Evidence(trials, hits, expected, z, 0.5 * math.erfc(z / math.sqrt(2.0)))


def _cased(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class StreamMarker:
    """Marks a text that arrives in pieces (a streamed answer): a word cut between two pieces
    is held back until it is whole, so :meth:`feed` may return less than it got; :meth:`flush`
    returns the rest at the end. The concatenation of what it returns is ``mark`` of the
    concatenation of what it was fed."""

    __slots__ = ("_held", "_previous", "_watermark")

    def __init__(self, watermark: Watermark) -> None:
        self._watermark = watermark
        self._held = ""
        self._previous = ""

    def feed(self, piece: str) -> str:
        """Mark what can be marked of ``self._held + piece``; hold a trailing partial word."""
        text = self._held + piece
        tail = _TAIL.search(text)
        cut = tail.start() if tail is not None else len(text)
        self._held = text[cut:]
        return self._mark(text[:cut])

    @property
    def held(self) -> bool:
        """Whether a partial word is held back."""
        return bool(self._held)

    def flush(self) -> str:
        """What is still held, marked."""
        text, self._held = self._held, ""
        return self._mark(text)

    def _mark(self, text: str) -> str:
        out: list[str] = []
        last = 0
        watermark = self._watermark
        previous = self._previous
        for match in _WORD.finditer(text):
            original = match.group()
            word = original.lower()
            found = watermark._trial(word, previous)
            if found is not None and found[1] != word:
                out.append(text[last : match.start()])
                out.append(_cased(found[1], original))
                last = match.end()
                word = found[1]
            previous = word
        self._previous = previous
        out.append(text[last:])
        return "".join(out)

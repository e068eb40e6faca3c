"""Cheap text features shared by the text detectors, computed once per request.

One pass normalises the prompt (ASCII lower case, punctuation to spaces, every digit to ``0``)
and splits it into words; every word gets a CRC-32 (deterministic across processes, so replays
are reproducible), and ``key`` is the CRC-32 of the raw prompt (exact repeats). From those, lazily:

* ``content``: the distinct hashes of the prompt's *content* words (not in
  :data:`COMMON_WORDS`): MinHash values and LSH buckets are its minimum and maximum;
  ``distinct``, the number of distinct words, comes with it; ``punctuation`` counts the
  prompt's ASCII punctuation marks;
* ``skeleton``: the sequence of *common* words of the prompt (the function words and the
  instruction words that make up a template's fixed part; numbers, names and other rare words
  are the slots and drop out);
* ``codes``: a signed hashed bag of word unigrams and character 4-gram word prefixes in
  :data:`DIM` dimensions, from at most :data:`EMBED_WORDS` evenly spaced words and a quarter as
  many prefixes (a fixed cost whatever the prompt size); ``embedding`` is its L2-normalised
  dense form.

For chat requests the prompt is the *last user message*: a conversation's history repeats on
every turn and would look like a near-duplicate stream otherwise.

The features of the last request are cached (one entry per thread, keyed by the :class:`Query`
object), so several detectors scoring the same request share the work.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Mapping
from itertools import repeat
from operator import itemgetter, mul

from ..query import Query

__all__ = ["DIM", "EMBED_WORDS", "COMMON_WORDS", "TextFeatures", "embed_text", "features", "prompt_text"]

DIM = 32
"""Dimensions of the hashed embedding."""
EMBED_WORDS = 32
"""At most this many words (evenly spaced) feed the embedding."""

_PUNCT = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n\r\x0b\x0c"
_TABLE = bytearray(range(256))
for _c in range(ord("A"), ord("Z") + 1):
    _TABLE[_c] = _c + 32
for _c in _PUNCT:
    _TABLE[_c] = 32
for _c in range(ord("0"), ord("9") + 1):
    _TABLE[_c] = ord("0")
_TRANSLATE = bytes(_TABLE)
_MARKS = bytes(c for c in _PUNCT if c > 32)  # the punctuation marks, without the whitespace
_PREFIX = itemgetter(slice(0, 4))
_SALT = 0x5BD1E995

COMMON_WORDS = frozenset(
    """a about above across after again against all almost also although always am among an and
    another any anyone anything are around as ask at be because been before being below between
    both but by can cannot could did do does doing done down during each either else enough even
    ever every few for from further get gets give given go going had has have having he her here
    hers him his how however i if in into is it its itself just least less let like make many may
    me might more most much must my myself need neither never no nor not now of off often on once
    one only or other others our ours out over own per please rather same shall she should since
    so some something still such than that the their them then there these they this those though
    through thus to too toward under until up upon us very was way we well were what whatever when
    where whether which while who whom whose why will with within without would yet you your yours
    yourself explain describe write list give summarize summarise translate answer question answers
    questions following step steps reasoning reason think detail detailed example examples show
    tell provide generate create compare define definition meaning difference between briefly
    short long sentence sentences words word paragraph paragraphs format response respond reply
    output input using use used first second third next finally then now solve calculate compute
    problem problems task tasks instruction instructions assistant user role act pretend imagine
    chain thought thoughts carefully concise clear clearly simple simply language english code
    function program python text essay story poem note notes key main points point important
    include including based context information data topic about regarding into true false yes
    """.split()  # noqa: SIM905
)
_COMMON_HASHES = frozenset(zlib.crc32(w.encode()) for w in COMMON_WORDS)
_is_common = set(_COMMON_HASHES).__contains__  # a set look-up is a little cheaper than a frozenset one


def prompt_text(query: Query) -> str:
    """The text the text detectors look at: the last user message of a chat, else the prompt."""
    data = query.data
    if query.kind == "chat" and data is not None:
        messages = data.get("messages")
        if isinstance(messages, list):
            for message in reversed(messages):
                if (type(message) is dict or isinstance(message, Mapping)) and message.get(
                    "role", "user"
                ) == "user":
                    content = message.get("content")
                    if isinstance(content, str):
                        return content
                    if isinstance(content, list):
                        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
                        return "\n".join(p for p in parts if isinstance(p, str))
                    break
    return query.text


class TextFeatures:
    """Features of one prompt (see the module docstring). Attributes are computed on demand."""

    __slots__ = ("_codes", "_content", "_distinct", "_skeleton", "hashes", "key", "raw", "words")

    def __init__(self, text: str) -> None:
        try:
            raw = text.encode()
        except UnicodeEncodeError:  # lone surrogates
            raw = text.encode("utf-8", "surrogatepass")
        self.raw = raw
        self.words: list[bytes] = raw.translate(_TRANSLATE).split()
        self.hashes: list[int] = list(map(zlib.crc32, self.words))
        self.key: int = zlib.crc32(raw)
        self._content: set[int] | None = None
        self._distinct = 0
        self._skeleton: tuple[int, ...] | None = None
        self._codes: list[int] | None = None

    @property
    def content(self) -> set[int]:
        """The hashes of the prompt's distinct *content* words (not in :data:`COMMON_WORDS`)."""
        if self._content is None:
            unique = set(self.hashes)
            self._distinct = len(unique)
            self._content = unique.difference(_COMMON_HASHES)
        return self._content

    @property
    def punctuation(self) -> int:
        """How many ASCII punctuation marks the prompt has (one C-level pass, on demand)."""
        raw = self.raw
        return len(raw) - len(raw.translate(None, _MARKS))

    @property
    def distinct(self) -> int:
        """How many distinct words the prompt has (built with :attr:`content`)."""
        if self._content is None:
            self.content  # noqa: B018  # computes both
        return self._distinct

    @property
    def skeleton(self) -> tuple[int, ...]:
        """The hashes of the prompt's common words, in order (its template skeleton)."""
        if self._skeleton is None:
            self._skeleton = tuple(filter(_is_common, self.hashes))
        return self._skeleton

    @property
    def codes(self) -> list[int]:
        """The signed-bin codes (``0 .. 2 * DIM - 1``) of the sampled words and word prefixes:
        code ``c`` adds 1 to dimension ``c`` (``c < DIM``) or subtracts 1 from ``c - DIM``."""
        if self._codes is None:
            hashes = self.hashes
            step = max(1, len(hashes) // EMBED_WORDS)
            codes = list(map(_MASK.__and__, hashes[::step][:EMBED_WORDS]))
            prefixes = self.words[:: step * 4][: EMBED_WORDS // 4]
            codes.extend(map(_MASK.__and__, map(zlib.crc32, map(_PREFIX, prefixes), repeat(_SALT))))
            self._codes = codes
        return self._codes

    @property
    def embedding(self) -> tuple[float, ...]:
        """The L2-normalised hashed embedding (:data:`DIM` floats; all zero for no words)."""
        vec = [0.0] * DIM
        for code in self.codes:
            if code >= DIM:
                vec[code - DIM] -= 1.0
            else:
                vec[code] += 1.0
        norm = math.sqrt(sum(map(mul, vec, vec)))
        if norm == 0.0:
            return tuple(vec)
        return tuple(map((1.0 / norm).__mul__, vec))


_MASK = 2 * DIM - 1


def embed_text(text: str) -> tuple[float, ...]:
    """The hashed embedding of ``text`` (as :attr:`TextFeatures.embedding`)."""
    return TextFeatures(text).embedding


class _Last(threading.local):
    """The last request's features, per thread: the detectors of one request share them, and a
    request scored in another thread (threaded WSGI servers, ASGI worker threads) does not
    evict them in between."""

    entry: tuple[Query | None, TextFeatures | None] = (None, None)


_last = _Last()


def features(query: Query) -> TextFeatures:
    """The features of ``query``'s prompt, shared by every detector scoring the same request
    (computed once per request and thread)."""
    last = _last
    cached_query, cached = last.entry
    if cached_query is query and cached is not None:
        return cached
    feats = TextFeatures(prompt_text(query))
    last.entry = (query, feats)
    return feats

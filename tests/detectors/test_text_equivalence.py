"""The shared text features keep their exact values: detectors, replays and stored state depend
on the per-word CRC-32s, on the iteration order of ``content`` (``coverage`` and
``scripted_sweep`` read its first words) and on the floats of ``embedding``. A faster
implementation must reproduce all of them."""

from __future__ import annotations

import random
import zlib

from distillguard.detectors._text import TextFeatures, embed_text

_ATTRIBUTES = ("words", "hashes", "key", "content", "skeleton", "codes", "embedding")
_PIECES = (
    "Explain",
    "step",
    "by",
    "the",
    "of",
    "why",
    "sky",
    "model",
    "River",
    "write a poem",
    "2024",
    "3.14",
    "e=mc2",
    "héllo",
    "wörld",
    "日本語",
    "\ud800",
    "😀",
    "!!",
    ",",
    "\n",
    "\t",
    "",
)


def _dump(feats: TextFeatures) -> str:
    """Every attribute with its type, ``content`` in iteration order."""
    values = [getattr(feats, name) for name in _ATTRIBUTES]
    return repr([(type(v).__name__, list(v) if isinstance(v, set) else v) for v in values])


def _prompts() -> list[str]:
    rng = random.Random(11)
    out = []
    for _ in range(300):
        words = rng.choices(_PIECES, k=rng.choice((0, 1, 3, 12, 60, 400)))
        out.append(" ".join(w + (str(rng.randrange(1000)) if rng.random() < 0.2 else "") for w in words))
    return out


def test_the_features_of_a_short_prompt() -> None:
    feats = TextFeatures("Explain, step by step: why is the sky blue in 2024?")
    assert b" ".join(feats.words) == b"explain step by step why is the sky blue in 0000"
    assert feats.hashes == list(map(zlib.crc32, feats.words))
    assert feats.hashes[:3] == [2089920066, 1136262716, 1070322242]
    assert feats.key == 3149040609
    assert list(feats.content) == [211534962, 2654390964, 103183599]
    assert feats.skeleton == tuple(h for i, h in enumerate(feats.hashes) if i not in (7, 8, 10))
    assert feats.codes == [2, 60, 2, 60, 48, 23, 38, 47, 52, 14, 50, 27, 23, 47]
    assert feats.embedding[2] == 0.42640143271122083
    assert feats.embedding[6] == -0.21320071635561041


def test_empty_and_surrogate_prompts() -> None:
    empty = TextFeatures("")
    assert (empty.words, empty.hashes, empty.key, empty.content) == ([], [], 0, set())
    assert (empty.skeleton, empty.codes) == ((), [])
    assert empty.embedding == (0.0,) * 32
    lone = TextFeatures("a \ud800 b")
    assert lone.words == [b"a", b"\xed\xa0\x80", b"b"]


def test_the_features_of_varied_prompts_are_unchanged() -> None:
    """A digest of every attribute of 300 varied prompts (sizes 0 to ~3 KB, unicode, lone
    surrogates, digits, punctuation), and of their embeddings through ``embed_text``."""
    prompts = _prompts()
    digest = zlib.crc32("".join(map(_dump, map(TextFeatures, prompts))).encode("utf-8", "surrogatepass"))
    embeddings = zlib.crc32(repr(list(map(embed_text, prompts))).encode())
    assert (digest, embeddings) == (2372743467, 3516219071)

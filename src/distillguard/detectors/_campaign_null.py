"""The benign null of the campaign detector: how often, without any campaign, an active account
is concentrated on a given template family.

Skeleton families recur in benign traffic ("how do I ... in ...", "what is the difference
between ... and ..."), so a family shared by several accounts is not evidence in itself. The null
pools two samples of the share ``q(s)`` of templated requests in family ``s``: a benign
reference (prompts given at construction) and the deployment's own *background* traffic,
counted in a two-row count-min sketch (only requests of accounts *not* concentrated on the
family: a campaign's members do not inflate their own base rate). An account is concentrated on a
family once it has drawn it twice, so the share of concentrated benign accounts on ``s`` is
taken proportional to ``q(s)**2`` and normalised by the collision probability ``sum(q**2)``
(kept incrementally from the sketch's first row). ``p_member``, the share of benign accounts
that become concentrated on some family, is measured on benign traffic with
:func:`benign_member_rate`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from ..errors import ConfigurationError
from ._base import check_range
from ._text import TextFeatures

__all__ = [
    "EDGE",
    "NO_FAMILIES",
    "BenignNull",
    "benign_member_rate",
    "concentrated",
    "family_key",
    "family_keys",
]

_GOLDEN = 0x9E3779B1


EDGE = 4
"""Words of the skeleton's head and tail families when they are enabled (``edge=EDGE``)."""
NO_FAMILIES = (0, 0, 0)


def family_keys(feats: TextFeatures, min_fixed: int, edge: int = 0) -> tuple[int, int, int]:
    """The template-family keys of a prompt: its whole skeleton (hashed as ``template_sweep``
    hashes it), and, for skeletons longer than ``edge + 1`` words, its first and its last
    ``edge`` words (a template wrapped around a natural question, "Q: {q} A: Let's think step by
    step", keeps its tail while the question's own common words change the whole skeleton).
    All 0 when the skeleton has fewer than ``min_fixed`` words or the prompt has no slot word;
    head and tail 0 when the skeleton is short."""
    skeleton = feats.skeleton
    size = len(skeleton)
    if size < min_fixed or size >= len(feats.hashes):
        return NO_FAMILIES
    whole = (hash(skeleton) & 0xFFFFFFFF) or 1
    if not edge or size <= edge + 1:
        return (whole, 0, 0)
    head = (hash((1, *skeleton[:edge])) & 0xFFFFFFFF) or 1
    tail = (hash((2, *skeleton[-edge:])) & 0xFFFFFFFF) or 1
    return (whole, head, tail)


def family_key(feats: TextFeatures, min_fixed: int) -> int:
    """The whole-skeleton family key of a prompt (see :func:`family_keys`), or 0."""
    return family_keys(feats, min_fixed, 0)[0]


def concentrated(families: array[int], fam: int, n: int, window: int, recur: int, min_share: float) -> float:
    """The account's share on ``fam`` when it is concentrated on it, else 0. ``families`` holds
    the keys of every kind of the last ``window`` requests (keys of different kinds are salted
    apart, so counting over all of them counts one kind)."""
    count = families.count(fam)
    share = count / (n if n < window else window)
    return share if count >= recur and share >= min_share else 0.0


def benign_member_rate(
    streams: Iterable[Sequence[str]],
    *,
    window: int = 8,
    recur: int = 2,
    min_share: float = 0.5,
    min_fixed: int = 4,
    edge: int = 0,
) -> float:
    """The share of benign accounts that become concentrated on some template family at least
    once (``p_member`` of the null): each element of ``streams`` is one benign account's prompts
    in order. Use the detector's own ``window``, ``recur``, ``min_share``, ``min_fixed`` and
    ``edge``."""
    total = hits = 0
    for prompts in streams:
        total += 1
        families = array("I", bytes(12 * window))
        texts = array("I", bytes(4 * window))
        for n, text in enumerate(prompts, 1):
            feats = TextFeatures(text)
            key = feats.key or 1
            keys = NO_FAMILIES if key in texts else family_keys(feats, min_fixed, edge)
            pos = (n - 1) % window
            families[3 * pos : 3 * pos + 3] = array("I", keys)
            texts[pos] = key
            if any(fam and concentrated(families, fam, n, window, recur, min_share) for fam in keys):
                hits += 1
                break
    return hits / total if total else 0.0


class BenignNull:
    """The benign probability that an active account is a member of a family (see the module
    docstring).

    Args:
        reference: benign prompts (at least 50, 10 of them templated).
        p_member: the share of benign accounts that become concentrated on some family.
        min_fixed: skeletons with fewer common words are not families.
        edge: words of the head and tail families (0: whole skeletons only).
        sketch_width: counters per row of the background sketch (a power of two).
        sketch_limit: every counter is halved once this many requests have been counted (the
            background is a window of roughly the last ``sketch_limit`` templated requests).
    """

    __slots__ = (
        "_background",
        "_mask",
        "_ref",
        "_ref_squares",
        "_ref_total",
        "_sketch",
        "_squares",
        "limit",
        "p_member",
    )

    def __init__(
        self,
        reference: Iterable[str],
        *,
        p_member: float,
        min_fixed: int,
        edge: int = 0,
        sketch_width: int = 4096,
        sketch_limit: int = 1 << 20,
    ) -> None:
        check_range("p_member", p_member, 1e-6, 1.0)
        check_range("sketch_width", sketch_width, 64, 1 << 24)
        check_range("sketch_limit", sketch_limit, 1024, 1 << 31)
        if sketch_width & (sketch_width - 1):
            raise ConfigurationError("sketch_width must be a power of two")
        counts: dict[int, int] = {}
        total = qualifying = 0
        for text in reference:
            total += 1
            keys = family_keys(TextFeatures(text), min_fixed, edge)
            if keys[0]:
                qualifying += 1
            for fam in keys:
                if fam:
                    counts[fam] = counts.get(fam, 0) + 1
        if total < 50 or qualifying < 10:
            raise ConfigurationError("campaign reference needs at least 50 prompts, 10 of them templated")
        self._ref = counts
        self._ref_total = sum(counts.values())
        self._ref_squares = sum(c * c for c in counts.values())
        self._mask = sketch_width - 1
        self._sketch = (array("I", bytes(4 * sketch_width)), array("I", bytes(4 * sketch_width)))
        self._background = 0
        self._squares = 0
        self.limit = sketch_limit
        self.p_member = p_member

    @property
    def background(self) -> int:
        """How many background requests the sketch currently holds (after halvings)."""
        return self._background

    def count(self, fam: int) -> None:
        """Count a templated request of an account not concentrated on ``fam``."""
        first, second = self._sketch
        cell = fam & self._mask
        old = first[cell]
        first[cell] = old + 1
        self._squares += 2 * old + 1
        second[(fam >> 16 ^ fam * _GOLDEN) & self._mask] += 1
        self._background += 1
        if self._background >= self.limit:
            self._sketch = (array("I", [c >> 1 for c in first]), array("I", [c >> 1 for c in second]))
            self._background = sum(self._sketch[0])
            self._squares = sum(c * c for c in self._sketch[0])

    def uncount(self, fam: int, times: int) -> None:
        """Take back ``times`` requests of ``fam`` counted before its account became
        concentrated on it (counters never go below zero)."""
        if times <= 0:
            return
        first, second = self._sketch
        cell = fam & self._mask
        old = first[cell]
        new = max(0, old - times)
        first[cell] = new
        self._squares += new * new - old * old
        self._background -= old - new
        other = (fam >> 16 ^ fam * _GOLDEN) & self._mask
        second[other] = max(0, second[other] - times)

    def share(self, fam: int) -> float:
        """``q(s)``: the family's share of templated requests, reference and background pooled
        (the reference counts as that many requests; a family it lacks gets one)."""
        first, second = self._sketch
        seen = min(first[fam & self._mask], second[(fam >> 16 ^ fam * _GOLDEN) & self._mask])
        return (seen + max(self._ref.get(fam, 0), 1)) / (self._background + self._ref_total)

    def rate(self, fam: int) -> float:
        """The benign probability that an active account is a member of ``fam``:
        ``p_member * q(s)**2 / sum(q**2)``."""
        total = self._background + self._ref_total
        collision = (self._squares + self._ref_squares) / (total * total)
        share = self.share(fam)
        return min(1.0, self.p_member * share * share / collision)

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

__all__ = ["BenignNull", "benign_member_rate", "concentrated", "family_key"]

_GOLDEN = 0x9E3779B1


def family_key(feats: TextFeatures, min_fixed: int) -> int:
    """The template-family key of a prompt (as ``template_sweep`` hashes skeletons), or 0 when
    its skeleton has fewer than ``min_fixed`` words or the prompt has no slot word."""
    skeleton = feats.skeleton
    if len(skeleton) < min_fixed or len(skeleton) >= len(feats.hashes):
        return 0
    return (hash(skeleton) & 0xFFFFFFFF) or 1


def concentrated(families: array[int], fam: int, n: int, recur: int, min_share: float) -> float:
    """The account's share on ``fam`` when it is concentrated on it, else 0."""
    if not fam:
        return 0.0
    count = families.count(fam)
    share = count / min(n, len(families))
    return share if count >= recur and share >= min_share else 0.0


def benign_member_rate(
    streams: Iterable[Sequence[str]],
    *,
    window: int = 8,
    recur: int = 2,
    min_share: float = 0.5,
    min_fixed: int = 4,
) -> float:
    """The share of benign accounts that become concentrated on some template family at least
    once (``p_member`` of the null): each element of ``streams`` is one benign account's prompts
    in order. Use the detector's own ``window``, ``recur``, ``min_share`` and ``min_fixed``."""
    total = hits = 0
    for prompts in streams:
        total += 1
        families = array("I", bytes(4 * window))
        texts = array("I", bytes(4 * window))
        for n, text in enumerate(prompts, 1):
            feats = TextFeatures(text)
            key = feats.key or 1
            fam = 0 if key in texts else family_key(feats, min_fixed)
            pos = (n - 1) % window
            families[pos], texts[pos] = fam, key
            if concentrated(families, fam, n, recur, min_share):
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
            fam = family_key(TextFeatures(text), min_fixed)
            if fam:
                qualifying += 1
                counts[fam] = counts.get(fam, 0) + 1
        if total < 50 or qualifying < 10:
            raise ConfigurationError("campaign reference needs at least 50 prompts, 10 of them templated")
        self._ref = counts
        self._ref_total = qualifying
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

"""The input domain of a vector endpoint, learnt from its traffic (used by ``prada``).

Per input width, a running mean and variance of every compared feature over the distinct
queries of *all* clients: an exponential moving average with rate ``max(1 / (k + 1), rate)``
over every ``every``-th query (``k`` such updates so far), so the first queries set it and later
ones follow a drifting population. A query's *spread* is its mean squared z-score over the
features: about 1 for inputs drawn from the population, about 4 for points drawn uniformly from
a box as wide as the data (a random-query attack). Until ``warmup`` queries have been seen the
reference is not ready.

The reference is shared by every client of the endpoint: it describes the population only when
no single client sends most of the traffic (a deployment used mostly by one client compares it
with itself).

Cost: the spread is one ``math.dist`` between the query scaled by the inverse standard
deviations (a C-level ``map``) and the scaled mean; the update, a Python loop over the features,
runs for one query in ``every``.
"""

from __future__ import annotations

import math
from operator import mul

__all__ = ["DomainReference"]


class _Stats:
    __slots__ = ("inv", "mean", "scaled", "seen", "updates", "var")

    def __init__(self, sample: tuple[float, ...]) -> None:
        width = len(sample)
        self.mean = list(sample)
        self.var = [0.0] * width
        self.inv = [0.0] * width  # 1 / standard deviation (0 for a constant feature)
        self.scaled = [0.0] * width  # mean * inv
        self.seen = 0
        self.updates = 0


class DomainReference:
    """Running per-feature mean and variance of an endpoint's inputs, per input width.

    Args:
        rate: the smallest update rate of the moving averages.
        warmup: queries (of one width) before :meth:`spread` returns a value.
        every: update the averages with one query in this many.
        max_widths: input widths tracked at once (the least recently added goes first).
    """

    def __init__(
        self, *, rate: float = 1.0 / 1024, warmup: int = 1000, every: int = 4, max_widths: int = 8
    ) -> None:
        self.rate = rate
        self.warmup = warmup
        self.every = every
        self.max_widths = max_widths
        self._stats: dict[int, _Stats] = {}

    def spread(self, sample: tuple[float, ...]) -> float | None:
        """The mean squared z-score of ``sample`` before it updates the reference (``None``
        while the reference of its width is warming up)."""
        width = len(sample)
        stats = self._stats.get(width)
        if stats is None:
            if len(self._stats) >= self.max_widths:
                del self._stats[next(iter(self._stats))]
            stats = self._stats[width] = _Stats(sample)
        stats.seen += 1
        out = None
        if stats.seen > self.warmup:
            out = math.dist(list(map(mul, sample, stats.inv)), stats.scaled) ** 2 / width
        if stats.seen % self.every == 1 or self.every == 1:
            self._update(stats, sample)
        return out

    def _update(self, stats: _Stats, sample: tuple[float, ...]) -> None:
        stats.updates += 1
        a = max(1.0 / (stats.updates + 1), self.rate)
        mean, var, inv, scaled = stats.mean, stats.var, stats.inv, stats.scaled
        for i, v in enumerate(sample):
            d = v - mean[i]
            m = mean[i] = mean[i] + a * d
            s = var[i] = (1.0 - a) * (var[i] + a * d * d)
            inv[i] = r = 1.0 / math.sqrt(s) if s > 0.0 else 0.0
            scaled[i] = m * r

"""The input domain of a vector endpoint, learnt from its traffic (used by ``prada``).

Per input width, a running mean and variance of every compared feature over the distinct
queries of *all* clients (an exponential moving average with rate ``max(1 / (n + 1), rate)``,
so the first queries set it and later ones follow a drifting population). A query's *spread* is
its mean squared z-score over the features: about 1 for inputs drawn from the population, about
4 for points drawn uniformly from a box as wide as the data (a random-query attack). Until
``warmup`` queries have been seen the reference is not ready.

The reference is shared by every client of the endpoint: it describes the population only when
no single client sends most of the traffic (a deployment used mostly by one client compares it
with itself).
"""

from __future__ import annotations

from array import array

__all__ = ["DomainReference"]


class DomainReference:
    """Running per-feature mean and variance of an endpoint's inputs, per input width.

    Args:
        rate: the smallest update rate of the moving averages.
        warmup: queries (of one width) before :meth:`spread` returns a value.
        max_widths: input widths tracked at once (the least recently added goes first).
    """

    def __init__(self, *, rate: float = 1.0 / 4096, warmup: int = 1000, max_widths: int = 8) -> None:
        self.rate = rate
        self.warmup = warmup
        self.max_widths = max_widths
        self._stats: dict[int, tuple[array[float], array[float], list[int]]] = {}

    def spread(self, sample: tuple[float, ...]) -> float | None:
        """The mean squared z-score of ``sample`` before it updates the reference (``None``
        while the reference of its width is warming up)."""
        width = len(sample)
        stats = self._stats.get(width)
        if stats is None:
            if len(self._stats) >= self.max_widths:
                del self._stats[next(iter(self._stats))]
            stats = self._stats[width] = (array("d", sample), array("d", [0.0] * width), [0])
        mean, var, seen = stats
        n = seen[0] = seen[0] + 1
        out = None
        if n > self.warmup:
            terms = zip(sample, mean, var, strict=True)
            out = sum((v - m) * (v - m) / s if s > 0.0 else 0.0 for v, m, s in terms) / width
        a = max(1.0 / (n + 1), self.rate)
        for i, v in enumerate(sample):
            d = v - mean[i]
            mean[i] += a * d
            var[i] = (1.0 - a) * (var[i] + a * d * d)
        return out

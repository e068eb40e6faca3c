"""The Shapiro-Wilk W test in pure Python (Royston's approximation, as in AS R94).

Coefficients follow Royston (1992, 1995): expected normal order statistics approximated by
Blom scores ``m_i = Phi^-1((i - 3/8) / (n + 1/4))``, the two extreme coefficients corrected by
Royston's polynomials in ``1/sqrt(n)``; the p-value of ``W`` (for ``12 <= n <= 5000``) from the
normal approximation of ``log(1 - W)``. Matches ``scipy.stats.shapiro`` to about 1e-3 in W.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from statistics import NormalDist

__all__ = ["shapiro_wilk"]

_N = NormalDist()


def _poly(u: float, coefficients: tuple[float, ...]) -> float:
    return math.fsum(c * u ** (i + 1) for i, c in enumerate(coefficients))


@lru_cache(maxsize=64)
def _coefficients(n: int) -> tuple[float, ...]:
    m = [_N.inv_cdf((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)]
    mm = math.fsum(v * v for v in m)
    u = 1.0 / math.sqrt(n)
    rsqrt = 1.0 / math.sqrt(mm)
    an = m[-1] * rsqrt + _poly(u, (0.221157, -0.147981, -2.071190, 4.434685, -2.706056))
    if n > 5:
        an1 = m[-2] * rsqrt + _poly(u, (0.042981, -0.293762, -1.752461, 5.682633, -3.582633))
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[-2], a[0], a[1] = an, an1, -an, -an1
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * an**2)
        a = [v / math.sqrt(phi) for v in m]
        a[-1], a[0] = an, -an
    return tuple(a)


def shapiro_wilk(values: Sequence[float]) -> tuple[float, float]:
    """``(W, p)`` of the Shapiro-Wilk test of normality for 12 to 5,000 values.

    ``W`` near 1 means normal-looking; ``p`` is the probability of a W this small under
    normality. Constant samples give ``(1.0, 1.0)``.

    Raises:
        ValueError: for fewer than 12 or more than 5,000 values.
    """
    n = len(values)
    if not 12 <= n <= 5000:
        raise ValueError("shapiro_wilk needs 12 to 5000 values")
    x = sorted(values)
    mean = math.fsum(x) / n
    ss = math.fsum((v - mean) ** 2 for v in x)
    if ss <= 0.0:
        return 1.0, 1.0
    a = _coefficients(n)
    w = min(1.0, math.fsum(ai * xi for ai, xi in zip(a, x, strict=True)) ** 2 / ss)
    ln = math.log(n)
    mu = 0.0038915 * ln**3 - 0.083751 * ln**2 - 0.31082 * ln - 1.5861
    sigma = math.exp(0.0030302 * ln**2 - 0.082676 * ln - 0.4803)
    z = (math.log(max(1.0 - w, 1e-300)) - mu) / sigma
    return w, 1.0 - _N.cdf(z)

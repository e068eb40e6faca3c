"""Calibration from benign traffic: thresholds as percentiles of a benign null.

**The null.** The detectors run over a benign request log through the offline engine. For every
client and every *window* (a UTC day by default: ``floor(ts / window_seconds)``) the highest
score of each detector is one sample of that detector's benign null. Taking the maximum per
client-window (not per request) matches how false positives are counted: a client-day is a
false positive when *any* of its requests is flagged.

**The threshold.** For each detector, ``threshold = min(0.95, max(floor, P_p(null)))`` where
``P_p`` is the ``p``-th percentile with linear interpolation between order statistics (numpy's
default ``"linear"`` method), computed by :func:`distillguard.risk.calibrate`. The ``floor``
(0.5 by default: the detectors' own flag level) keeps a detector that scored 0 on all benign
traffic at its own scale, so calibration only ever makes a detector *less* sensitive than its
defaults; a lower floor lets a quiet benign null make it more sensitive. With ``p = 99.9``
about one benign client-window in a thousand reaches the threshold, so the estimate needs
several thousand client-windows: the file records how many samples each threshold rests on.

**Using it.** The thresholds go to the risk policy (:class:`distillguard.risk.RiskPolicy`),
which rescales each detector's score so that its threshold lands on the ``flag`` level
(piecewise linear: ``[0, t] -> [0, flag]`` and ``[t, 1] -> [flag, 1]``).
``distillguard replay --config`` reads the file, and so can a deployment::

    thresholds = Thresholds.load("thresholds.json")
    guard = Guard(jwt=..., detectors=[...], policy=Policy(risk=thresholds.risk_policy()))
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..policy import Policy
from ..risk import RiskPolicy, calibrate as risk_calibrate
from .engine import ReplayEngine, offline_guard
from .log import DEFAULT_ROUTES, LogStats, RouteMatcher, read_log

__all__ = ["Thresholds", "benign_null", "calibrate", "percentile"]

FORMAT = "distillguard-thresholds/1"


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolating linearly between order
    statistics (numpy's default method).

    Raises:
        ValueError: for no values or ``p`` outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= p <= 100.0:
        raise ValueError("p must be in [0, 100]")
    ordered = sorted(values)
    rank = p / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """Calibrated thresholds, one per detector.

    Attributes:
        detectors: the threshold of each detector, on its own score scale.
        percentile: the percentile of the benign null they were taken at.
        window_seconds: the length of one client-window.
        floor: the lowest threshold allowed.
        samples: how many client-windows each threshold rests on.
        clients: how many benign clients the log held.
    """

    detectors: Mapping[str, float]
    percentile: float = 99.9
    window_seconds: float = 86_400.0
    floor: float = 0.5
    samples: Mapping[str, int] = field(default_factory=dict)
    clients: int = 0

    def __post_init__(self) -> None:
        for name, value in self.detectors.items():
            if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ConfigurationError(f"threshold of {name!r} must be in (0, 1)")

    def risk_policy(self, **options: Any) -> RiskPolicy:
        """A :class:`~distillguard.risk.RiskPolicy` using these thresholds (``options`` are
        passed on, e.g. ``block=None``)."""
        return RiskPolicy(thresholds=dict(self.detectors), **options)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "format": FORMAT,
            "percentile": self.percentile,
            "window_seconds": self.window_seconds,
            "floor": self.floor,
            "clients": self.clients,
            "thresholds": {k: round(v, 6) for k, v in sorted(self.detectors.items())},
            "samples": dict(sorted(self.samples.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thresholds:
        """Read the file's content.

        Raises:
            ConfigurationError: when it is not a thresholds file.
        """
        if data.get("format") != FORMAT or not isinstance(data.get("thresholds"), Mapping):
            raise ConfigurationError(f"not a thresholds file (expected format {FORMAT!r})")
        return cls(
            detectors={str(k): float(v) for k, v in data["thresholds"].items()},
            percentile=float(data.get("percentile", 99.9)),
            window_seconds=float(data.get("window_seconds", 86_400.0)),
            floor=float(data.get("floor", 0.5)),
            samples={str(k): int(v) for k, v in data.get("samples", {}).items()},
            clients=int(data.get("clients", 0)),
        )

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        """Read a thresholds file written by ``distillguard calibrate``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read thresholds file {str(path)!r}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigurationError("a thresholds file holds a JSON object")
        return cls.from_json(data)

    def save(self, path: str | Path) -> None:
        """Write the thresholds file."""
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def benign_null(
    lines: Iterable[str],
    detectors: Iterable[Any],
    *,
    window_seconds: float = 86_400.0,
    routes: Iterable[str] = DEFAULT_ROUTES,
) -> tuple[dict[str, list[float]], LogStats, int]:
    """Replay a benign log; return each detector's per-client-window maximum scores, the log
    statistics and the number of clients."""
    if window_seconds <= 0:
        raise ConfigurationError("window_seconds must be positive")
    guard = offline_guard(list(detectors), Policy(flag=1.0, degrade=None, block=None, shadow=True))
    engine = ReplayEngine(guard)
    stats = LogStats()
    best: dict[tuple[str, int], dict[str, float]] = {}
    for record in read_log(lines, stats, RouteMatcher(routes)):
        decision = engine.feed(record)
        key = (record.client, math.floor(record.ts / window_seconds))
        window = best.get(key)
        if window is None:
            window = best[key] = {}
        for result in decision.results:
            if result.score > window.get(result.detector, -1.0):
                window[result.detector] = result.score
    names = [d.name for d in guard.detectors]
    null = {name: [w.get(name, 0.0) for w in best.values()] for name in names}
    return null, stats, len(engine.tracks)


def calibrate(
    lines: Iterable[str],
    detectors: Iterable[Any],
    *,
    p: float = 99.9,
    window_seconds: float = 86_400.0,
    floor: float = 0.5,
    routes: Iterable[str] = DEFAULT_ROUTES,
) -> Thresholds:
    """Thresholds at the ``p``-th percentile of each detector's benign null (see the module
    docstring).

    Raises:
        ConfigurationError: when the log holds no usable request.
    """
    if not 0.0 < p < 100.0:
        raise ConfigurationError("the percentile must be in (0, 100)")
    if not 0.0 < floor <= 0.95:
        raise ConfigurationError("the floor must be in (0, 0.95]")
    null, stats, clients = benign_null(lines, detectors, window_seconds=window_seconds, routes=routes)
    if stats.replayed == 0:
        raise ConfigurationError("the benign log holds no usable request")
    at_percentile = risk_calibrate(null, p, floor=floor)
    return Thresholds(
        detectors=at_percentile,
        percentile=p,
        window_seconds=window_seconds,
        floor=floor,
        samples={name: len(values) for name, values in null.items()},
        clients=clients,
    )

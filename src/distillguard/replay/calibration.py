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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..decision import Decision
from ..errors import ConfigurationError
from ..policy import Policy
from ..query import finite_float
from ..risk import RiskPolicy, calibrate as risk_calibrate
from .engine import ReplayEngine, offline_guard
from .log import DEFAULT_MAX_LINE_BYTES, DEFAULT_ROUTES, LogRecord, LogStats, Oversized
from .output import write_atomic

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
        errors: what failed while the log was replayed, by kind (``detector:<name>``: a detector
            raised and scored 0 for that request, which lowers its null and so its threshold).
    """

    detectors: Mapping[str, float]
    percentile: float = 99.9
    window_seconds: float = 86_400.0
    floor: float = 0.5
    samples: Mapping[str, int] = field(default_factory=dict)
    clients: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)

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
            "errors": dict(sorted(self.errors.items())),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Thresholds:
        """Read the file's content.

        Raises:
            ConfigurationError: when it is not a thresholds file, naming the field at fault.
        """
        if data.get("format") != FORMAT:
            raise ConfigurationError(f"not a thresholds file (expected format {FORMAT!r})")
        thresholds = data.get("thresholds")
        if not isinstance(thresholds, Mapping):
            raise ConfigurationError("thresholds file: 'thresholds' must be an object {detector: threshold}")
        detectors: dict[str, float] = {}
        for name, value in thresholds.items():
            number = finite_float(value)
            if number is None or not 0.0 < number < 1.0:
                raise ConfigurationError(
                    f"thresholds file: thresholds.{name} must be a number in (0, 1), not {_shown(value)}"
                )
            detectors[str(name)] = number
        samples = data.get("samples", {})
        if not isinstance(samples, Mapping):
            raise ConfigurationError("thresholds file: 'samples' must be an object {detector: count}")
        counts: dict[str, int] = {}
        for name, value in samples.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(
                    f"thresholds file: samples.{name} must be a non-negative integer, not {_shown(value)}"
                )
            counts[str(name)] = value
        errors = data.get("errors", {})
        if not isinstance(errors, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in errors.values()
        ):
            raise ConfigurationError("thresholds file: 'errors' must be an object {kind: count}")
        clients = data.get("clients", 0)
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 0:
            raise ConfigurationError(
                f"thresholds file: 'clients' must be a non-negative integer, not {_shown(clients)}"
            )
        return cls(
            detectors=detectors,
            percentile=_field(data, "percentile", 99.9),
            window_seconds=_field(data, "window_seconds", 86_400.0),
            floor=_field(data, "floor", 0.5),
            samples=counts,
            clients=clients,
            errors={str(k): v for k, v in errors.items()},
        )

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        """Read a thresholds file written by ``distillguard calibrate``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read thresholds file {str(path)!r}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigurationError("a thresholds file holds a JSON object")
        return cls.from_json(data)

    def save(self, path: str | Path) -> None:
        """Write the thresholds file, replacing it whole (see
        :func:`~distillguard.replay.output.write_atomic`).

        Raises:
            OSError: when the file cannot be written.
        """
        text = json.dumps(self.to_json(), indent=1) + "\n"
        write_atomic(path, text.encode("utf-8", "backslashreplace"))


def _shown(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _field(data: Mapping[str, Any], key: str, default: float) -> float:
    number = finite_float(data.get(key, default))
    if number is None:
        raise ConfigurationError(f"thresholds file: {key!r} must be a number, not {_shown(data.get(key))}")
    return number


def benign_null(
    lines: Iterable[str | Oversized],
    detectors: Iterable[Any],
    *,
    window_seconds: float = 86_400.0,
    routes: Iterable[str] = DEFAULT_ROUTES,
    stats: LogStats | None = None,
    progress: TextIO | None = None,
    progress_every: int = 100_000,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    errors: Counter[str] | None = None,
) -> tuple[dict[str, list[float]], LogStats, int]:
    """Replay a benign log; return each detector's per-client-window maximum scores, the log
    statistics (``stats`` when given, filled in as the log is read) and the number of clients.
    ``errors``, when given, is filled in with what failed (detector errors by name).
    ``progress`` and ``progress_every`` are as for :class:`ReplayEngine`."""
    if not math.isfinite(window_seconds) or window_seconds <= 0:
        raise ConfigurationError("window_seconds must be a positive number")
    best: dict[tuple[str, int], dict[str, float]] = {}

    def collect(record: LogRecord, decision: Decision) -> None:
        key = (record.client, math.floor(record.ts / window_seconds))
        window = best.get(key)
        if window is None:
            window = best[key] = {}
        for result in decision.results:
            if result.score > window.get(result.detector, -1.0):
                window[result.detector] = result.score

    guard = offline_guard(list(detectors), Policy(flag=1.0, degrade=None, block=None, shadow=True))
    engine = ReplayEngine(
        guard, progress=progress, progress_every=progress_every, observer=collect, label="calibrate"
    )
    stats = stats if stats is not None else LogStats()
    engine.replay(lines, stats, routes, max_line_bytes=max_line_bytes)
    if errors is not None:
        errors.update(engine.errors)
    names = [d.name for d in guard.detectors]
    null = {name: [w.get(name, 0.0) for w in best.values()] for name in names}
    return null, stats, len(engine.tracks)


def calibrate(
    lines: Iterable[str | Oversized],
    detectors: Iterable[Any],
    *,
    p: float = 99.9,
    window_seconds: float = 86_400.0,
    floor: float = 0.5,
    routes: Iterable[str] = DEFAULT_ROUTES,
    stats: LogStats | None = None,
    progress: TextIO | None = None,
    progress_every: int = 100_000,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Thresholds:
    """Thresholds at the ``p``-th percentile of each detector's benign null (see the module
    docstring). ``stats``, when given, is filled in with what reading the log found (malformed,
    out-of-order, unknown-path lines...), for the caller to report.

    Raises:
        ConfigurationError: when the log holds no usable request.
    """
    if not 0.0 < p < 100.0:
        raise ConfigurationError("the percentile must be in (0, 100)")
    if not 0.0 < floor <= 0.95:
        raise ConfigurationError("the floor must be in (0, 0.95]")
    failed: Counter[str] = Counter()
    null, stats, clients = benign_null(
        lines,
        detectors,
        window_seconds=window_seconds,
        routes=routes,
        stats=stats,
        progress=progress,
        progress_every=progress_every,
        max_line_bytes=max_line_bytes,
        errors=failed,
    )
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
        errors=dict(failed),
    )

"""The detector hook: what a detector sees (:class:`Observation`), what it returns
(:class:`DetectorResult`), the :class:`Detector` and :class:`AsyncDetector` Protocols, and the
entry-point registry (group ``distillguard.detectors``).

Writing a detector::

    class LongPromptDetector:
        name = "long_prompt"

        def score(self, observation: Observation) -> DetectorResult:
            long = len(observation.query.text) > 20_000
            return DetectorResult(self.name, 1.0 if long else 0.0, ("long_prompt",) if long else ())

Detectors keep per-client history themselves, bounded; in memory it is per process (with a
shared limit storage, the built-in detectors also keep it there: see ``_sharing``).
"""

from __future__ import annotations

from ._protocol import (
    AsyncDetector,
    Detector,
    DetectorResult,
    Observation,
    is_async_detector,
)
from ._registry import ENTRY_POINT_GROUP, load_detectors, validate_detector

__all__ = [
    "ENTRY_POINT_GROUP",
    "AsyncDetector",
    "Detector",
    "DetectorResult",
    "Observation",
    "is_async_detector",
    "load_detectors",
    "validate_detector",
]

"""The default detector set.

``default_detectors()`` builds one of each built-in detector with its default settings:

=================== ============================== ==========================================
name                class                          catches
=================== ============================== ==========================================
``near_duplicate``  :class:`NearDuplicateDetector` systematic variation of one prompt
``template_sweep``  :class:`TemplateSweepDetector` template + slot sweeps
``coverage``        :class:`CoverageDetector`      natural-data sweeps (distribution shift)
``parameter_probe`` :class:`ParameterProbeDetector` logprob/logit_bias probing, sampling sweeps
``volume_timing``   :class:`VolumeTimingDetector`  sustained, machine-regular streams
``prada``           :class:`PradaDetector`         synthetic/perturbed numeric inputs
``scripted_sweep``  :class:`ScriptedSweepDetector` new standalone prompts at a machine cadence
``word_salad``      :class:`WordSaladDetector`     random-word queries (no word ever repeats)
=================== ============================== ==========================================

Every one of them is also registered under its name in the ``distillguard.detectors``
entry-point group, so ``Guard(detectors=["near_duplicate", ...])`` loads it by name.
"""

from __future__ import annotations

from typing import Any

from .coverage import CoverageDetector
from .near_duplicate import NearDuplicateDetector
from .prada import PradaDetector
from .probing import ParameterProbeDetector
from .scripted import ScriptedSweepDetector
from .template import TemplateSweepDetector
from .timing import VolumeTimingDetector
from .word_salad import WordSaladDetector

__all__ = [
    "DEFAULT_DETECTORS",
    "OPT_IN_DETECTORS",
    "CoverageDetector",
    "NearDuplicateDetector",
    "ParameterProbeDetector",
    "PradaDetector",
    "ScriptedSweepDetector",
    "TemplateSweepDetector",
    "VolumeTimingDetector",
    "WordSaladDetector",
    "default_detectors",
]

DEFAULT_DETECTORS: dict[str, type[Any]] = {
    "near_duplicate": NearDuplicateDetector,
    "template_sweep": TemplateSweepDetector,
    "coverage": CoverageDetector,
    "parameter_probe": ParameterProbeDetector,
    "volume_timing": VolumeTimingDetector,
    "prada": PradaDetector,
    "scripted_sweep": ScriptedSweepDetector,
    "word_salad": WordSaladDetector,
}
"""The built-in detectors by name."""

OPT_IN_DETECTORS = frozenset({"campaign", "semantic_coverage"})
"""Built-in detectors registered by name but left out unless asked for: ``campaign`` (state
across accounts) and ``semantic_coverage`` (the ``embeddings`` extra's model, milliseconds per
prompt)."""


def default_detectors(max_clients: int | None = None) -> list[Any]:
    """A fresh instance of every built-in detector (each with its own client state).

    Args:
        max_clients: the cap on tracked clients of each detector (each detector's default
            when ``None``).
    """
    options: dict[str, Any] = {} if max_clients is None else {"max_clients": max_clients}
    return [cls(**options) for cls in DEFAULT_DETECTORS.values()]

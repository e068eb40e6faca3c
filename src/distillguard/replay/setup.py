"""Choosing the detectors of an offline run: named ones, or the built-in default set."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any

from ..detectors import ENTRY_POINT_GROUP, load_detectors, validate_detector
from ..errors import ConfigurationError, PluginError

__all__ = ["default_detector_names", "default_detectors", "resolve_detectors"]


def default_detector_names() -> list[str]:
    """The names of every detector installed in the entry-point group."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def default_detectors() -> list[Any]:
    """Fresh instances of the built-in default detector set
    (``distillguard.detectors.defaults.default_detectors()``), or of every installed detector
    when that module is not available."""
    try:
        module = importlib.import_module("distillguard.detectors.defaults")
    except ModuleNotFoundError as exc:
        if exc.name != "distillguard.detectors.defaults":
            raise
        return load_detectors(default_detector_names())
    return list(module.default_detectors())


def _load(names: Sequence[str]) -> list[Any]:
    """Entry-point names, or ``module:factory`` paths called without arguments."""
    out: list[Any] = []
    plain: list[str] = []
    for name in names:
        if ":" not in name:
            plain.append(name)
            continue
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
            out.append(validate_detector(factory(), name))
        except (ImportError, AttributeError, TypeError) as exc:
            raise PluginError(name, f"could not be created: {type(exc).__name__}: {exc}") from exc
    return out + load_detectors(plain)


def resolve_detectors(names: Sequence[str] | None) -> list[Any]:
    """Fresh detectors: the named ones (entry-point names, or ``module:factory`` paths) or the
    defaults.

    Raises:
        ConfigurationError: when no detector is available.
        PluginError: for an unknown name.
    """
    detectors = _load(names) if names else default_detectors()
    if not detectors:
        raise ConfigurationError(f"no detectors: none is installed in the {ENTRY_POINT_GROUP!r} group")
    return detectors

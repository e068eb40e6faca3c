"""Loading detectors by name from the ``distillguard.detectors`` entry-point group.

Only the names listed in the configuration load: installing a package never switches a
detector on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import PluginError

__all__ = ["ENTRY_POINT_GROUP", "load_detectors", "validate_detector"]

ENTRY_POINT_GROUP = "distillguard.detectors"


def _entry_points() -> Mapping[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same):  # one package seen twice is one
            same.append(ep)
    return found


def _owner(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{getattr(dist, 'name', None) or '?'} ({ep.value})"


def validate_detector(obj: object, name: str) -> Any:
    """Check that ``obj`` looks like a detector; return it.

    Raises:
        PluginError: when ``name`` or ``score`` is missing or not usable.
    """
    det_name = getattr(obj, "name", None)
    if not isinstance(det_name, str) or not det_name:
        raise PluginError(name, "a detector needs a non-empty string attribute 'name'")
    if not callable(getattr(obj, "score", None)):
        raise PluginError(name, "a detector needs a callable 'score(observation)'")
    return obj


def load_detectors(spec: Mapping[str, Mapping[str, Any]] | Iterable[str]) -> list[Any]:
    """Instantiate the named detectors from the entry-point group.

    Args:
        spec: names, or a mapping of name to keyword options for the detector's factory,
            e.g. ``{"near_duplicate": {"threshold": 0.8}}``.

    Raises:
        PluginError: for an unknown name, a factory that fails, or an invalid detector.
    """
    options: Mapping[str, Mapping[str, Any]] = (
        spec if isinstance(spec, Mapping) else {name: {} for name in spec}
    )
    available = _entry_points()
    loaded = []
    for name, kwargs in options.items():
        candidates = available.get(name)
        if not candidates:
            known = ", ".join(sorted(available)) or "none"
            raise PluginError(name, f"no such entry point in {ENTRY_POINT_GROUP!r} (installed: {known})")
        if len(candidates) > 1:  # never let an installed package silently replace a detector
            owners = " and ".join(_owner(ep) for ep in candidates)
            raise PluginError(name, f"registered by {owners}: uninstall one of them")
        ep = candidates[0]
        try:
            factory = ep.load()
            detector = factory(**dict(kwargs))
        except Exception as exc:
            raise PluginError(name, f"could not be created: {type(exc).__name__}: {exc}") from exc
        loaded.append(validate_detector(detector, name))
    return loaded

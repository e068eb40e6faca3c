"""Small helpers shared by the built-in detectors."""

from __future__ import annotations

from ..errors import ConfigurationError

__all__ = ["ramp", "check_range", "NO_SIGNALS"]

NO_SIGNALS: dict[str, float] = {}


def ramp(value: float, low: float, high: float) -> float:
    """0 at or below ``low``, 1 at or above ``high``, linear in between."""
    if value <= low:
        return 0.0
    if value >= high:
        return 1.0
    return (value - low) / (high - low)


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise :class:`ConfigurationError` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be in [{low}, {high}], got {value!r}")

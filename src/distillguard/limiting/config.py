"""Limit settings (validated at construction)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from limits import RateLimitItem, parse_many
from limits.strategies import STRATEGIES

from ..errors import ConfigurationError

__all__ = ["LimitConfig", "parse_limits"]


def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """Parse ``"60/minute;1000/day"`` into limit items; an empty string means no limit.

    Raises:
        ConfigurationError: when the string is not valid ``limits`` notation.
    """
    if not text.strip():
        return ()
    try:
        return tuple(parse_many(text))
    except ValueError as exc:
        raise ConfigurationError(f"invalid limit string {text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitConfig:
    """Request limits per client, by tier.

    Args:
        default: the windows for tiers not listed in ``tiers`` (``limits`` notation, several
            separated by ``;``). An empty string means unlimited.
        tiers: windows by tier name, e.g. ``{"free": "20/minute;200/day", "pro": "600/minute"}``.
        strategy: ``"moving-window"`` (exact; default), ``"sliding-window-counter"`` or
            ``"fixed-window"`` (up to twice the limit across a window boundary).
        storage_uri: a ``limits`` storage URI. ``memory://`` (the default) counts per process;
            use ``redis://`` and friends to share limits across workers and replicas.
        storage_options: extra options for the storage (e.g. ``{"socket_timeout": 0.25}``).
        headers: send the IETF ``RateLimit-Policy`` and ``RateLimit`` fields (draft-10) on
            responses. Limits are always enforced; this only controls disclosure.
        key_prefix: the namespace of distillguard's counters in the storage.
    """

    default: str = "60/minute;1000/day"
    tiers: Mapping[str, str] = field(default_factory=dict)
    strategy: str = "moving-window"
    storage_uri: str = "memory://"
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    headers: bool = True
    key_prefix: str = "dg"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(
                f"unknown limit strategy {self.strategy!r}; choose from {sorted(STRATEGIES)}"
            )
        parse_limits(self.default)
        for tier, text in self.tiers.items():
            if not isinstance(tier, str) or not tier:
                raise ConfigurationError("tier names must be non-empty strings")
            parse_limits(text)
        if "://" not in self.storage_uri:
            raise ConfigurationError(f"storage_uri must be a limits storage URI, got {self.storage_uri!r}")

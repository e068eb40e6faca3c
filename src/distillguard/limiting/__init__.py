"""Limits: which windows apply to a request (the plan), how they are counted through storage
outages, token budgets, concurrency caps and the IETF RateLimit fields.

Counting is done by the ``limits`` library's strategies on its storages (or on the bounded
memory storage of :mod:`.storage`); this package decides *which* windows a request is charged
against, what a refusal or an outage means, and how outcomes are shown.
"""

from __future__ import annotations

from .config import LimitConfig
from .outage import LimiterStats, OutagePolicy
from .plan import LimitCheck, LimitOutcome, LimitPlan, WindowUsage
from .rules import LimitRule, Price

__all__ = [
    "LimitCheck",
    "LimitConfig",
    "LimitOutcome",
    "LimitPlan",
    "LimitRule",
    "LimiterStats",
    "OutagePolicy",
    "Price",
    "WindowUsage",
]

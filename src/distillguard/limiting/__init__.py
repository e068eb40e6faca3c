"""Limits: which windows apply to a request (the plan), and the IETF RateLimit fields.

Counting is done by the ``limits`` library's strategies and storages; this package only decides
*which* limits a request is charged against and how outcomes are shown. It imports nothing from
the rest of distillguard but :mod:`distillguard.errors`, :mod:`distillguard.identity` and
:mod:`distillguard.query`.
"""

from __future__ import annotations

from .config import LimitConfig
from .plan import LimitCheck, LimitOutcome, LimitPlan

__all__ = ["LimitCheck", "LimitConfig", "LimitOutcome", "LimitPlan"]

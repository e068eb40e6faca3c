"""Performing the pipeline's effects: the sync performer (WSGI) and the async one (ASGI).

Every exception from a storage or a detector is *returned*, not raised: the pipeline decides
what a failure means (see :mod:`distillguard.flow`).
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from .detectors import is_async_detector
from .flow import Effect, HitLimit, RunDetector
from .limiting.effects import ChargeLimit, HitLimits, RefundLimit
from .limiting.limiter import AsyncLimiter, Limiter

__all__ = ["AsyncPerformer", "SyncPerformer"]


class SyncPerformer:
    """Performs effects with a sync :class:`~distillguard.limiting.limiter.Limiter`."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def __call__(self, effect: Effect) -> object:
        try:
            if type(effect) is HitLimits:
                return self.limiter.hit_many(effect.checks)
            if type(effect) is HitLimit:
                return self.limiter.hit(effect.check, effect.charge)
            if type(effect) is RefundLimit:
                self.limiter.refund(effect.check, effect.amount, effect.mode)
                return None
            if type(effect) is ChargeLimit:
                self.limiter.charge(effect.check, effect.amount, effect.mode)
                return None
            if type(effect) is RunDetector:
                return effect.detector.score(effect.observation)
        except Exception as exc:
            return exc
        raise TypeError(f"unknown effect {effect!r}")


class AsyncPerformer:
    """Performs effects with an :class:`~distillguard.limiting.limiter.AsyncLimiter`; runs async
    detectors by awaiting them and ``blocking = True`` detectors in a worker thread."""

    def __init__(self, limiter: AsyncLimiter) -> None:
        self.limiter = limiter
        self._kinds: dict[int, str] = {}

    def _kind(self, detector: Any) -> str:
        kind = self._kinds.get(id(detector))
        if kind is None:
            if is_async_detector(detector):
                kind = "async"
            elif getattr(detector, "blocking", False):
                kind = "thread"
            else:
                kind = "inline"
            self._kinds[id(detector)] = kind
        return kind

    async def __call__(self, effect: Effect) -> object:
        try:
            if type(effect) is HitLimits:
                return await self.limiter.hit_many(effect.checks)
            if type(effect) is HitLimit:
                return await self.limiter.hit(effect.check, effect.charge)
            if type(effect) is RefundLimit:
                await self.limiter.refund(effect.check, effect.amount, effect.mode)
                return None
            if type(effect) is ChargeLimit:
                await self.limiter.charge(effect.check, effect.amount, effect.mode)
                return None
            if type(effect) is RunDetector:
                detector = effect.detector
                kind = self._kind(detector)
                if kind == "inline":
                    return detector.score(effect.observation)
                if kind == "async":
                    return await detector.score(effect.observation)
                return await anyio.to_thread.run_sync(detector.score, effect.observation)
        except Exception as exc:
            return exc
        raise TypeError(f"unknown effect {effect!r}")

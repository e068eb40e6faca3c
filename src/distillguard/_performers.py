"""Performing the pipeline's effects: the sync performer (WSGI) and the async one (ASGI).

Every exception from a storage or a detector is *returned*, not raised: the pipeline decides
what a failure means (see :mod:`distillguard.flow`).
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from .detectors import is_async_detector
from .flow import Effect, HitLimit, RunDetector, TestLimit
from .limiting import LimitOutcome

__all__ = ["AsyncPerformer", "SyncPerformer"]


class SyncPerformer:
    """Performs effects with a sync ``limits`` strategy."""

    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy

    def __call__(self, effect: Effect) -> object:
        try:
            if type(effect) is HitLimit:
                check = effect.check
                strategy = self._strategy
                if effect.charge:
                    allowed = strategy.hit(check.item, *check.key, cost=check.cost)
                else:
                    allowed = strategy.test(check.item, *check.key, cost=check.cost)
                stats = strategy.get_window_stats(check.item, *check.key)
                return LimitOutcome(
                    check=check, allowed=allowed, remaining=stats.remaining, reset_at=stats.reset_time
                )
            if type(effect) is TestLimit:
                check = effect.check
                return self._strategy.test(check.item, *check.key, cost=check.cost)
            if type(effect) is RunDetector:
                return effect.detector.score(effect.observation)
        except Exception as exc:
            return exc
        raise TypeError(f"unknown effect {effect!r}")


class AsyncPerformer:
    """Performs effects with an async ``limits`` strategy (``limits.aio``); runs async
    detectors by awaiting them and ``blocking = True`` detectors in a worker thread."""

    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy
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
            if type(effect) is HitLimit:
                check = effect.check
                strategy = self._strategy
                if effect.charge:
                    allowed = await strategy.hit(check.item, *check.key, cost=check.cost)
                else:
                    allowed = await strategy.test(check.item, *check.key, cost=check.cost)
                stats = await strategy.get_window_stats(check.item, *check.key)
                return LimitOutcome(
                    check=check, allowed=allowed, remaining=stats.remaining, reset_at=stats.reset_time
                )
            if type(effect) is TestLimit:
                check = effect.check
                return await self._strategy.test(check.item, *check.key, cost=check.cost)
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

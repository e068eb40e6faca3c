"""Performing the pipeline's effects: the sync performer (WSGI) and the async one (ASGI).

Every exception from a storage or a detector is *returned*, not raised: the pipeline decides
what a failure means (see :mod:`distillguard.flow`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.to_thread

from .detectors import is_async_detector
from .flow import Effect, HitLimit, RunDetector
from .limiting.effects import (
    AcquireSlot,
    ChargeLimit,
    ForgetClient,
    HitLimits,
    JoinRecords,
    LoadState,
    RefundLimit,
    ReleaseSlot,
    RenewSlot,
    SaveState,
)
from .limiting.limiter import AsyncLimiter, Limiter

__all__ = ["AsyncPerformer", "SyncPerformer"]


class SyncPerformer:
    """Performs effects with a sync :class:`~distillguard.limiting.limiter.Limiter`."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    def __call__(self, effect: Effect) -> object:
        try:
            if type(effect) is HitLimits:
                if effect.state is not None:
                    return self.limiter.hit_and_read(effect.checks, effect.state.key, effect.state.known)
                return self.limiter.hit_many(effect.checks, effect.charge)
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
            if type(effect) is LoadState:
                return self.limiter.load_state(effect.key, effect.known)
            if type(effect) is SaveState:
                return self.limiter.save_state(
                    effect.key, effect.stamp, effect.data, effect.ttl_ms, effect.expected
                )
            if type(effect) is JoinRecords:
                return self.limiter.join_records(effect.joins)
            if type(effect) is ForgetClient:
                return self.limiter.forget(effect.clear, effect.state, effect.count)
            if type(effect) is AcquireSlot:
                return self.limiter.acquire_slot(effect.key, effect.cap, effect.lease_ms, effect.token)
            if type(effect) is RenewSlot:
                return self.limiter.renew_slot(effect.key, effect.token, effect.lease_ms)
            if type(effect) is ReleaseSlot:
                return self.limiter.release_slot(effect.key, effect.token)
        except Exception as exc:
            return exc
        raise TypeError(f"unknown effect {effect!r}")


class AsyncPerformer:
    """Performs effects with an :class:`~distillguard.limiting.limiter.AsyncLimiter`; runs async
    detectors by awaiting them and ``blocking = True`` detectors in a worker thread."""

    def __init__(self, limiter: AsyncLimiter, *, detector_timeout: float | None = None) -> None:
        self.limiter = limiter
        self.detector_timeout = detector_timeout
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
                state = effect.state
                if state is not None:
                    return await self.limiter.hit_and_read(effect.checks, state.key, state.known)
                return await self.limiter.hit_many(effect.checks, effect.charge)
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
                return await self._awaited(detector, kind, effect.observation)
            if type(effect) is LoadState:
                return await self.limiter.load_state(effect.key, effect.known)
            if type(effect) is SaveState:
                return await self.limiter.save_state(
                    effect.key, effect.stamp, effect.data, effect.ttl_ms, effect.expected
                )
            if type(effect) is JoinRecords:
                return await self.limiter.join_records(effect.joins)
            if type(effect) is ForgetClient:
                return await self.limiter.forget(effect.clear, effect.state, effect.count)
            if type(effect) is AcquireSlot:
                return await self.limiter.acquire_slot(effect.key, effect.cap, effect.lease_ms, effect.token)
            if type(effect) is RenewSlot:
                return await self.limiter.renew_slot(effect.key, effect.token, effect.lease_ms)
            if type(effect) is ReleaseSlot:
                return await self.limiter.release_slot(effect.key, effect.token)
        except Exception as exc:
            return exc
        raise TypeError(f"unknown effect {effect!r}")

    async def _awaited(self, detector: Any, kind: str, observation: Any) -> object:
        """Run an async or ``blocking`` detector within ``detector_timeout``. A detector that
        runs out of time, or lets a cancellation of its own escape while the request itself is
        not being cancelled, is a detector error (its result is the exception); a thread left
        running is abandoned, never awaited."""
        timeout = self.detector_timeout
        try:
            with anyio.fail_after(timeout):
                if kind == "async":
                    return await detector.score(observation)
                return await anyio.to_thread.run_sync(detector.score, observation, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class() as exc:
            if _cancelling():
                raise  # the request is being cancelled (the client left): let it go
            return RuntimeError(f"detector cancelled itself ({type(exc).__name__})")


def _cancelling() -> bool:
    """Whether the current task is being cancelled from outside (Python 3.11+, asyncio); when
    that cannot be told, assume it is (never swallow a real cancellation)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not asyncio (trio)
        return True
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0

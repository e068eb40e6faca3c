"""Charging, refunding and reading windows on the configured storage, through outages.

:class:`Limiter` (sync, WSGI) and :class:`AsyncLimiter` (ASGI) are twins: each charges a
:class:`~distillguard.limiting.plan.LimitCheck` with its ``limits`` strategy on the configured
storage and, when that storage fails or the circuit breaker is open, applies the outage policy
(:mod:`distillguard.limiting.outage`). Every outcome says where it was decided
(:attr:`LimitOutcome.mode`).

Refunds (quota taken back) exist because a refused request must not keep quota it did not use:

* the fixed window counts a refused hit (``INCR`` then compare), so a refused fixed-window hit
  is refunded at once;
* when a later window (or the concurrency cap, or a detector) refuses, the windows already
  charged are refunded by the pipeline;
* token windows are reconciled after the response (charge the difference, or refund it).

Fixed-window and sliding-window-counter refunds decrement the counter (never below zero,
keeping its expiry); moving-window refunds remove the newest entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from limits.aio.strategies import STRATEGIES as ASYNC_STRATEGIES
from limits.errors import StorageError
from limits.strategies import STRATEGIES

from ._script import CHARGE_WINDOWS_LUA, outcomes, script_args, scriptable
from .config import LimitConfig
from .outage import CircuitBreaker, LimiterStats
from .plan import LimitCheck, LimitOutcome
from .storage import arefund, build_storage, is_memory, refund

__all__ = ["AsyncLimiter", "Limiter"]

logger = logging.getLogger("distillguard")


def _outcome(
    check: LimitCheck,
    allowed: bool,
    stats: Any,
    mode: str = "primary",
    error: str | None = None,
    charged: bool = True,
) -> LimitOutcome:
    return LimitOutcome(
        check=check,
        allowed=allowed,
        remaining=stats.remaining,
        reset_at=stats.reset_time,
        mode=mode,
        error=error,
        charged=charged,
    )


def _with_error(outcome: LimitOutcome, error: str) -> LimitOutcome:
    return LimitOutcome(
        check=outcome.check,
        allowed=outcome.allowed,
        remaining=outcome.remaining,
        reset_at=outcome.reset_at,
        error=error,
        mode=outcome.mode,
        charged=outcome.charged,
    )


class _Base:
    def __init__(self, config: LimitConfig, stats: LimiterStats, *, asynchronous: bool) -> None:
        self.config = config
        self.stats = stats
        self.breaker = CircuitBreaker(
            threshold=config.breaker_threshold,
            base_delay=config.breaker_base_delay,
            max_delay=config.breaker_max_delay,
            stats=stats,
        )
        self.local = build_storage("memory://", asynchronous=asynchronous, max_keys=config.memory_max_keys)
        self.remote = not is_memory(config.storage_uri)
        self._primary: Any = None if self.remote else self.local
        self._asynchronous = asynchronous
        factory: dict[str, Any] = dict(ASYNC_STRATEGIES if asynchronous else STRATEGIES)
        self._local_strategies = {name: cls(self.local) for name, cls in factory.items()}
        self._strategies: dict[str, Any] = {} if self.remote else self._local_strategies
        self._script: Any = None
        previous = stats.evictions
        stats.evictions = (
            (lambda: self.local.evictions + previous())
            if previous is not None
            else (lambda: self.local.evictions)
        )

    def _build_primary(self) -> None:
        storage = build_storage(
            self.config.storage_uri,
            self.config.storage_options,
            asynchronous=self._asynchronous,
            max_keys=self.config.memory_max_keys,
            key_prefix=self.config.key_prefix,
        )
        factory: dict[str, Any] = dict(ASYNC_STRATEGIES if self._asynchronous else STRATEGIES)
        strategies: dict[str, Any] = {}
        for name, cls in factory.items():
            try:
                strategies[name] = cls(storage)
            except NotImplementedError:
                continue
        self._primary = storage
        self._strategies = strategies
        self._script = None

    @property
    def storage(self) -> Any:
        """The configured storage (``None`` until first used)."""
        return self._primary

    def _degraded(self, exc: BaseException | None) -> tuple[str, str]:
        """Count one outage decision; return ``(mode, error)`` (the error names the mode and the
        failure, e.g. ``"fallback:StorageError"``, and shows on the span)."""
        policy = self.config.outage
        reason = type(exc).__name__ if exc is not None else "breaker_open"
        if exc is not None and self.breaker.failures == 1:
            logger.warning("distillguard: limit storage failed (%s); outage policy %s", reason, policy)
        if policy == "local_fallback":
            self.stats.local_fallback += 1
            mode = "fallback"
        elif policy == "fail_open":
            self.stats.fail_open += 1
            mode = "open"
        else:
            self.stats.fail_closed += 1
            mode = "closed"
        return mode, f"{mode}:{reason}"

    @staticmethod
    def _uncounted(check: LimitCheck, mode: str, error: str) -> LimitOutcome:
        return LimitOutcome(
            check=check, allowed=mode == "open", remaining=0, reset_at=0.0, error=error, mode=mode
        )


class Limiter(_Base):
    """Sync limiter (see the module docstring).

    Args:
        config: the limit settings.
        stats: the counters to update (shared by the guard's performers).
    """

    def __init__(self, config: LimitConfig, stats: LimiterStats) -> None:
        super().__init__(config, stats, asynchronous=False)

    def _hit(
        self, strategies: dict[str, Any], storage: Any, check: LimitCheck, charge: bool
    ) -> tuple[bool, Any]:
        strategy = strategies[check.strategy]
        item, key = check.item, check.key
        if charge:
            allowed = strategy.hit(item, *key, cost=check.cost)
            if not allowed and check.strategy == "fixed-window":
                refund(storage, check.strategy, item.key_for(*key), item.get_expiry(), check.cost)
        else:
            allowed = strategy.test(item, *key, cost=check.cost)
        return allowed, strategy.get_window_stats(item, *key)

    def _on_primary(self, fn: Callable[[], Any]) -> tuple[bool, Any, BaseException | None]:
        """Run ``fn`` on the configured storage; ``(done, result, error)``."""
        if not self.remote:
            return True, fn(), None
        if not self.breaker.allow():
            return False, None, None
        try:
            if self._primary is None:
                self._build_primary()
            result = fn()
        except Exception as exc:
            self.breaker.failure()
            return False, None, exc
        self.breaker.success()
        return True, result, None

    def _many(
        self,
        strategies: dict[str, Any],
        storage: Any,
        checks: tuple[LimitCheck, ...],
        charge: bool,
        mode: str,
    ) -> tuple[LimitOutcome, ...]:
        if mode == "primary" and self.remote and scriptable(storage, checks):
            if self._script is None:
                self._script = storage.get_connection().register_script(CHARGE_WINDOWS_LUA)
            keys, args = script_args(storage, checks, charge)
            try:
                replies = self._script(keys=keys, args=args)
            except Exception as exc:  # the driver's error, as limits would wrap it
                raise StorageError(exc) from exc
            return outcomes(checks, replies, charge)
        out: list[LimitOutcome] = []
        for check in checks:
            allowed, stats = self._hit(strategies, storage, check, charge)
            out.append(_outcome(check, allowed, stats, mode, charged=charge))
            if not allowed:
                break
        return tuple(out)

    def hit_many(self, checks: tuple[LimitCheck, ...], charge: bool = True) -> tuple[LimitOutcome, ...]:
        """Charge every window of a request (one round trip and all or nothing on a single
        Redis; otherwise window by window, stopping at the first refusal)."""
        done, result, exc = self._on_primary(
            lambda: self._many(self._strategies, self._primary, checks, charge, "primary")
        )
        if done:
            return result  # type: ignore[no-any-return]
        mode, error = self._degraded(exc)
        if mode != "fallback":
            return (self._uncounted(checks[0], mode, error),)
        local = self._many(self._local_strategies, self.local, checks, charge, mode)
        return tuple(_with_error(o, error) for o in local)

    def hit(self, check: LimitCheck, charge: bool = True) -> LimitOutcome:
        """Charge ``check`` (or only test it); the outcome says whether it fit."""
        return self.hit_many((check,), charge)[0]

    def refund(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Take ``amount`` back from the window ``check`` was charged on (``mode``)."""
        item = check.item
        key = item.key_for(*check.key)
        if mode == "fallback":
            refund(self.local, check.strategy, key, item.get_expiry(), amount)
            return
        if mode != "primary":
            return
        done, applied, _ = self._on_primary(
            lambda: refund(self._primary, check.strategy, key, item.get_expiry(), amount)
        )
        if done and not applied:
            self.stats.refunds_unsupported += 1

    def charge(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Add ``amount`` to a counter window even past its limit (usage beyond the estimate)."""
        if amount <= 0 or mode not in ("primary", "fallback"):
            return
        item = check.item
        key = item.key_for(*check.key)
        if mode == "primary":
            done, _, _ = self._on_primary(lambda: self._primary.incr(key, item.get_expiry(), amount))
            if done:
                return
        self.local.incr(key, item.get_expiry(), amount)


class AsyncLimiter(_Base):
    """Async limiter for ASGI (the twin of :class:`Limiter`)."""

    def __init__(self, config: LimitConfig, stats: LimiterStats) -> None:
        super().__init__(config, stats, asynchronous=True)

    async def _hit(
        self, strategies: dict[str, Any], storage: Any, check: LimitCheck, charge: bool
    ) -> tuple[bool, Any]:
        strategy = strategies[check.strategy]
        item, key = check.item, check.key
        if charge:
            allowed = await strategy.hit(item, *key, cost=check.cost)
            if not allowed and check.strategy == "fixed-window":
                await arefund(storage, check.strategy, item.key_for(*key), item.get_expiry(), check.cost)
        else:
            allowed = await strategy.test(item, *key, cost=check.cost)
        return allowed, await strategy.get_window_stats(item, *key)

    async def _on_primary(self, fn: Callable[[], Any]) -> tuple[bool, Any, BaseException | None]:
        if not self.remote:
            return True, await fn(), None
        if not self.breaker.allow():
            return False, None, None
        try:
            if self._primary is None:
                self._build_primary()
            result = await fn()
        except Exception as exc:
            self.breaker.failure()
            return False, None, exc
        self.breaker.success()
        return True, result, None

    async def _many(
        self,
        strategies: dict[str, Any],
        storage: Any,
        checks: tuple[LimitCheck, ...],
        charge: bool,
        mode: str,
    ) -> tuple[LimitOutcome, ...]:
        if mode == "primary" and self.remote and scriptable(storage, checks):
            if self._script is None:
                self._script = storage.bridge.get_connection().register_script(CHARGE_WINDOWS_LUA)
            keys, args = script_args(storage, checks, charge)
            try:
                replies = await self._script(keys=keys, args=args)
            except Exception as exc:  # the driver's error, as limits would wrap it
                raise StorageError(exc) from exc
            return outcomes(checks, replies, charge)
        out: list[LimitOutcome] = []
        for check in checks:
            allowed, stats = await self._hit(strategies, storage, check, charge)
            out.append(_outcome(check, allowed, stats, mode, charged=charge))
            if not allowed:
                break
        return tuple(out)

    async def hit_many(self, checks: tuple[LimitCheck, ...], charge: bool = True) -> tuple[LimitOutcome, ...]:
        """Charge every window of a request (see :meth:`Limiter.hit_many`)."""
        done, result, exc = await self._on_primary(
            lambda: self._many(self._strategies, self._primary, checks, charge, "primary")
        )
        if done:
            return result  # type: ignore[no-any-return]
        mode, error = self._degraded(exc)
        if mode != "fallback":
            return (self._uncounted(checks[0], mode, error),)
        local = await self._many(self._local_strategies, self.local, checks, charge, mode)
        return tuple(_with_error(o, error) for o in local)

    async def hit(self, check: LimitCheck, charge: bool = True) -> LimitOutcome:
        """Charge ``check`` (or only test it); the outcome says whether it fit."""
        return (await self.hit_many((check,), charge))[0]

    async def refund(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Take ``amount`` back from the window ``check`` was charged on (``mode``)."""
        item = check.item
        key = item.key_for(*check.key)
        if mode == "fallback":
            await arefund(self.local, check.strategy, key, item.get_expiry(), amount)
            return
        if mode != "primary":
            return
        done, applied, _ = await self._on_primary(
            lambda: arefund(self._primary, check.strategy, key, item.get_expiry(), amount)
        )
        if done and not applied:
            self.stats.refunds_unsupported += 1

    async def charge(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Add ``amount`` to a counter window even past its limit (usage beyond the estimate)."""
        if amount <= 0 or mode not in ("primary", "fallback"):
            return
        item = check.item
        key = item.key_for(*check.key)
        if mode == "primary":
            done, _, _ = await self._on_primary(lambda: self._primary.incr(key, item.get_expiry(), amount))
            if done:
                return
        await self.local.incr(key, item.get_expiry(), amount)

    async def aclose(self) -> None:
        """Close the storage's connections (call it on the event loop that used them, e.g. at
        lifespan shutdown)."""
        bridge = getattr(self._primary, "bridge", None)
        sentinel = getattr(bridge, "sentinel", None)
        clients = [getattr(bridge, "storage", None), getattr(bridge, "storage_replica", None)]
        clients.extend(getattr(sentinel, "sentinels", ()))
        for client in clients:
            if client is None or not hasattr(client, "aclose"):
                continue
            pool = getattr(client, "connection_pool", None)
            await client.aclose()
            if pool is not None and hasattr(pool, "disconnect"):
                await pool.disconnect()

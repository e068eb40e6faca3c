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

import asyncio
from collections.abc import Callable
from typing import Any, cast

import anyio
from limits.errors import StorageError

from ._limiter_base import LimiterBase, logger, outcome_of, record_members, with_error
from ._table import BoundedTable
from .config import LimitConfig
from .effects import UNREAD, Charged, JoinRecord
from .outage import LimiterStats
from .plan import LimitCheck, LimitOutcome
from .storage import arefund, refund

__all__ = ["AsyncLimiter", "Limiter"]


class Limiter(LimiterBase):
    """Sync limiter (see the module docstring).

    Args:
        config: the limit settings.
        stats: the counters to update (shared by the guard's performers).
        table: the memory counter table (shared by the guard's limiters; a new one by default).
    """

    def __init__(self, config: LimitConfig, stats: LimiterStats, table: BoundedTable | None = None) -> None:
        super().__init__(config, stats, asynchronous=False, table=table)

    def _hit(
        self, strategies: dict[str, Any], storage: Any, check: LimitCheck, charge: bool
    ) -> tuple[bool, Any]:
        strategy = strategies[check.strategy]
        item, key = check.item, check.key
        if charge and check.cost:  # a cost of 0 only reads the window
            allowed = strategy.hit(item, *key, cost=check.cost)
            if not allowed and check.strategy == "fixed-window":
                refund(storage, check.strategy, *self._window(check), check.cost)
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
        state: tuple[str, str] | None = None,
    ) -> tuple[tuple[LimitOutcome, ...], object]:
        script = self._charge_script(storage, checks, mode, lambda: storage.get_connection())
        if script is not None:
            keys, args, read = self._script_args(storage, checks, charge, state)
            try:
                replies = script(keys=keys, args=args)
            except Exception as exc:  # the driver's error, as limits would wrap it
                raise StorageError(exc) from exc
            return self._replied(checks, replies, charge, read)
        fast = self._in_memory(storage, checks, charge, mode)
        if fast is not None:
            return fast, UNREAD
        out: list[LimitOutcome] = []
        for check in checks:
            allowed, stats = self._hit(strategies, storage, check, charge)
            out.append(outcome_of(check, allowed, stats, mode, charged=charge))
            if not allowed:
                charge = False  # the windows after a refusal are only read
        return tuple(out), UNREAD

    def hit_many(self, checks: tuple[LimitCheck, ...], charge: bool = True) -> tuple[LimitOutcome, ...]:
        """Charge every window of a request (one round trip and all or nothing on a single
        Redis; otherwise window by window, only reading the windows after a refusal, so that
        ``Retry-After`` covers every window that would refuse it)."""
        return (self._charged(checks, charge, None)).outcomes

    def hit_and_read(self, checks: tuple[LimitCheck, ...], key: str, known: str) -> Charged:
        """Charge every window of a request and read the client's detector state (as
        :meth:`load_state`; in the same round trip when the windows are charged by the script).
        The state is the exception that stopped the read, if any."""
        return self._charged(checks, True, (key, known))

    def _charged(
        self, checks: tuple[LimitCheck, ...], charge: bool, state: tuple[str, str] | None
    ) -> Charged:
        if not self.remote:  # memory: no outage possible, one call per window
            return Charged(self._in_memory(self.local, checks, charge, "primary") or (), None)
        done, result, exc = self._on_primary(
            lambda: self._many(self._strategies, self._primary, checks, charge, "primary", state)
        )
        if done:
            charged, stored = result
            if stored is UNREAD and state is not None:  # not by the script: a read of its own
                try:
                    stored = self.load_state(*state)
                except StorageError as failure:
                    stored = failure
            return Charged(charged, stored)
        failed = self._failure(exc)
        error, decided = self._outage(checks, exc)
        if decided is not None:
            return Charged(decided, failed)
        local, _ = self._many(self._local_strategies, self.local, checks, charge, "fallback")
        return Charged(tuple(with_error(o, error) for o in local), failed)

    def hit(self, check: LimitCheck, charge: bool = True) -> LimitOutcome:
        """Charge ``check`` (or only test it); the outcome says whether it fit."""
        return self.hit_many((check,), charge)[0]

    def refund(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Take ``amount`` back from the window ``check`` was charged on (``mode``)."""
        key, expiry = self._window(check)
        if mode == "fallback":
            refund(self.local, check.strategy, key, expiry, amount)
            return
        if mode != "primary":
            return
        done, applied, _ = self._on_primary(
            lambda: refund(self._primary, check.strategy, key, expiry, amount)
        )
        self._count_refund(done, applied)

    def charge(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Add ``amount`` to a counter window even past its limit (usage beyond the estimate)."""
        if amount <= 0 or mode not in ("primary", "fallback"):
            return
        key, expiry = self._window(check)
        if mode == "primary":
            done, _, _ = self._on_primary(lambda: self._primary.incr(key, expiry, amount))
            if done:
                return
        self.local.incr(key, expiry, amount)

    def forget(self, clear: tuple[LimitCheck, ...], state: str | None, count: LimitCheck | None) -> bool:
        """Clear the windows of ``clear``, delete the detector state stored under ``state``, and
        add one to the window of ``count``; the answer of
        :class:`~distillguard.limiting.effects.ForgetClient`. Raises ``StorageError`` when the
        storage fails."""
        for check in clear:
            self.local.clear(self._window(check)[0])
        if not self.remote:
            return False

        def forget() -> None:
            for check in clear:
                self._primary.clear(self._window(check)[0])
            holder = self._redis() if state is not None else None
            if holder is not None:
                holder.get_connection().delete(holder.prefixed_key(state))
            if count is not None:
                self._primary.incr(*self._window(count), 1)

        done, _, exc = self._on_primary(forget)
        if not done:
            raise self._failure(exc)
        return True

    def load_state(self, key: str, known: str) -> object:
        """The detector state stored under ``key`` (``(stamp, data)``), or ``None`` when the
        stored stamp is ``known``, nothing is stored, or the storage shares no state. Raises
        ``StorageError`` when the storage fails (and counts it on the circuit breaker)."""
        if not self.remote:
            return None

        def load() -> object:
            io = self._state_io(key)
            return None if io is None else io[1][0](keys=[io[0]], args=[known])

        done, result, exc = self._on_primary(load)
        if not done:
            raise self._failure(exc)
        return result

    def save_state(self, key: str, stamp: str, data: str, ttl_ms: int, expected: str = "") -> object:
        """Store a detector state under ``key`` unless its stored stamp is no longer
        ``expected``: ``True`` when stored, the stored ``(stamp, data)`` when another replica
        wrote in between, ``False`` when the storage did not answer."""
        if not self.remote:
            return False

        def save() -> object:
            io = self._state_io(key)
            if io is None:
                return False
            reply = io[1][1](keys=[io[0]], args=[stamp, data, ttl_ms, expected])
            return reply if isinstance(reply, (list, tuple)) else reply == 1

        done, result, _ = self._on_primary(save)
        return result if done else False

    def join_records(self, joins: tuple[JoinRecord, ...]) -> list[list[tuple[str, float]]] | None:
        """Add each join to its shared record (one script call each, all in one pipelined
        round trip; on a Redis Cluster, whose pipelines take no scripts, one call after the
        other); each record's members after it, ``None`` when the storage shares nothing.
        Raises ``StorageError`` when the storage fails."""
        if not self.remote:
            return None

        def join() -> object:
            io = self._record_jobs(joins)
            if io is None:
                return None
            script, jobs, pipe = io
            if pipe is not None:
                answer = self._record_replies(pipe.execute(raise_on_error=False))
                if answer is not None:
                    return answer
            return [record_members(script(keys=k, args=a)) for k, a in jobs]

        done, result, exc = self._on_primary(join)
        if not done:
            raise self._failure(exc)
        return cast("list[list[tuple[str, float]]] | None", result)

    def acquire_slot(self, key: str, cap: int, lease_ms: int, token: str) -> str:
        """Take the lease ``token`` in ``key`` under ``cap`` on the shared storage; the answer
        of :class:`~distillguard.limiting.effects.AcquireSlot`."""

        def acquire() -> Any:
            io = self._slot_io(key)
            return None if io is None else io[1][0](keys=[io[0]], args=[cap, lease_ms, token])

        return self._slot_mode(*self._on_primary(acquire))

    def renew_slot(self, key: str, token: str, lease_ms: int) -> bool:
        """Extend a lease; whether the storage answered."""

        def renew() -> Any:
            io = self._slot_io(key)
            return None if io is None else io[1][1](keys=[io[0]], args=[lease_ms, token])

        return self._on_primary(renew)[0]

    def release_slot(self, key: str, token: str) -> bool:
        """Remove a lease; whether the storage answered."""

        def release() -> Any:
            io = self._slot_io(key)
            return None if io is None else io[1][2](keys=[io[0]], args=[token])

        return self._on_primary(release)[0]

    def probe(self) -> tuple[bool, str]:
        """Ask the shared storage once whether it answers (the storage's socket timeouts bound
        the wait): ``(answered, reason)``. Never raises; ``(True, "")`` for memory storage."""
        if not self.remote:
            return True, ""
        try:
            if self._primary is None:
                self._build_primary()
            answered = bool(self._primary.check())
        except Exception as exc:  # the storage's own error: reported, never raised
            return False, type(exc).__name__
        return answered, "" if answered else "no answer to PING"


class AsyncLimiter(LimiterBase):
    """Async limiter for ASGI (the twin of :class:`Limiter`)."""

    def __init__(self, config: LimitConfig, stats: LimiterStats, table: BoundedTable | None = None) -> None:
        super().__init__(config, stats, asynchronous=True, table=table)

    async def _hit(
        self, strategies: dict[str, Any], storage: Any, check: LimitCheck, charge: bool
    ) -> tuple[bool, Any]:
        strategy = strategies[check.strategy]
        item, key = check.item, check.key
        if charge and check.cost:  # a cost of 0 only reads the window
            allowed = await strategy.hit(item, *key, cost=check.cost)
            if not allowed and check.strategy == "fixed-window":
                await arefund(storage, check.strategy, *self._window(check), check.cost)
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
        state: tuple[str, str] | None = None,
    ) -> tuple[tuple[LimitOutcome, ...], object]:
        script = self._charge_script(storage, checks, mode, lambda: storage.bridge.get_connection())
        if script is not None:
            keys, args, read = self._script_args(storage, checks, charge, state)
            try:
                replies = await script(keys=keys, args=args)
            except Exception as exc:  # the driver's error, as limits would wrap it
                raise StorageError(exc) from exc
            return self._replied(checks, replies, charge, read)
        fast = self._in_memory(storage, checks, charge, mode)
        if fast is not None:
            return fast, UNREAD
        out: list[LimitOutcome] = []
        for check in checks:
            allowed, stats = await self._hit(strategies, storage, check, charge)
            out.append(outcome_of(check, allowed, stats, mode, charged=charge))
            if not allowed:
                charge = False  # the windows after a refusal are only read
        return tuple(out), UNREAD

    async def hit_many(self, checks: tuple[LimitCheck, ...], charge: bool = True) -> tuple[LimitOutcome, ...]:
        """Charge every window of a request (see :meth:`Limiter.hit_many`)."""
        return (await self._charged(checks, charge, None)).outcomes

    async def hit_and_read(self, checks: tuple[LimitCheck, ...], key: str, known: str) -> Charged:
        """Charge every window of a request and read the client's detector state (as
        :meth:`load_state`; in the same round trip when the windows are charged by the script).
        The state is the exception that stopped the read, if any."""
        return await self._charged(checks, True, (key, known))

    async def _charged(
        self, checks: tuple[LimitCheck, ...], charge: bool, state: tuple[str, str] | None
    ) -> Charged:
        if not self.remote:  # memory: no outage possible, one call per window
            return Charged(self._in_memory(self.local, checks, charge, "primary") or (), None)
        done, result, exc = await self._on_primary(
            lambda: self._many(self._strategies, self._primary, checks, charge, "primary", state)
        )
        if done:
            charged, stored = result
            if stored is UNREAD and state is not None:  # not by the script: a read of its own
                try:
                    stored = await self.load_state(*state)
                except StorageError as failure:
                    stored = failure
            return Charged(charged, stored)
        failed = self._failure(exc)
        error, decided = self._outage(checks, exc)
        if decided is not None:
            return Charged(decided, failed)
        local, _ = await self._many(self._local_strategies, self.local, checks, charge, "fallback")
        return Charged(tuple(with_error(o, error) for o in local), failed)

    async def hit(self, check: LimitCheck, charge: bool = True) -> LimitOutcome:
        """Charge ``check`` (or only test it); the outcome says whether it fit."""
        return (await self.hit_many((check,), charge))[0]

    async def refund(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Take ``amount`` back from the window ``check`` was charged on (``mode``)."""
        key, expiry = self._window(check)
        if mode == "fallback":
            await arefund(self.local, check.strategy, key, expiry, amount)
            return
        if mode != "primary":
            return
        done, applied, _ = await self._on_primary(
            lambda: arefund(self._primary, check.strategy, key, expiry, amount)
        )
        self._count_refund(done, applied)

    async def charge(self, check: LimitCheck, amount: int, mode: str = "primary") -> None:
        """Add ``amount`` to a counter window even past its limit (usage beyond the estimate)."""
        if amount <= 0 or mode not in ("primary", "fallback"):
            return
        key, expiry = self._window(check)
        if mode == "primary":
            done, _, _ = await self._on_primary(lambda: self._primary.incr(key, expiry, amount))
            if done:
                return
        await self.local.incr(key, expiry, amount)

    async def forget(
        self, clear: tuple[LimitCheck, ...], state: str | None, count: LimitCheck | None
    ) -> bool:
        """Clear windows, delete a stored detector state, count a release (see
        :meth:`Limiter.forget`)."""
        for check in clear:
            await self.local.clear(self._window(check)[0])
        if not self.remote:
            return False

        async def forget() -> None:
            for check in clear:
                await self._primary.clear(self._window(check)[0])
            holder = self._redis() if state is not None else None
            if holder is not None:
                await holder.get_connection().delete(holder.prefixed_key(state))
            if count is not None:
                await self._primary.incr(*self._window(count), 1)

        done, _, exc = await self._on_primary(forget)
        if not done:
            raise self._failure(exc)
        return True

    async def load_state(self, key: str, known: str) -> object:
        """The detector state stored under ``key`` (``(stamp, data)``), or ``None`` when the
        stored stamp is ``known``, nothing is stored, or the storage shares no state. Raises
        ``StorageError`` when the storage fails (and counts it on the circuit breaker)."""
        if not self.remote:
            return None

        async def load() -> object:
            io = self._state_io(key)
            return None if io is None else await io[1][0](keys=[io[0]], args=[known])

        done, result, exc = await self._on_primary(load)
        if not done:
            raise self._failure(exc)
        return result

    async def save_state(self, key: str, stamp: str, data: str, ttl_ms: int, expected: str = "") -> object:
        """Store a detector state under ``key`` unless its stored stamp is no longer
        ``expected``: ``True`` when stored, the stored ``(stamp, data)`` when another replica
        wrote in between, ``False`` when the storage did not answer."""
        if not self.remote:
            return False

        async def save() -> object:
            io = self._state_io(key)
            if io is None:
                return False
            reply = await io[1][1](keys=[io[0]], args=[stamp, data, ttl_ms, expected])
            return reply if isinstance(reply, (list, tuple)) else reply == 1

        done, result, _ = await self._on_primary(save)
        return result if done else False

    async def join_records(self, joins: tuple[JoinRecord, ...]) -> list[list[tuple[str, float]]] | None:
        """Add each join to its shared record (see :meth:`Limiter.join_records`; on a Redis
        Cluster, or after a flushed script cache, the calls of different records run
        concurrently, those of one record in order)."""
        if not self.remote:
            return None

        async def join() -> object:
            io = self._record_jobs(joins)
            if io is None:
                return None
            script, jobs, pipe = io
            if pipe is not None:
                answer = self._record_replies(await pipe.execute(raise_on_error=False))
                if answer is not None:
                    return answer
            # one record's joins in their order (each answer is the record after its own join),
            # different records concurrently (on a cluster, different nodes)
            replies: list[Any] = [None] * len(jobs)
            by_record: dict[str, list[int]] = {}
            for i, (keys, _) in enumerate(jobs):
                by_record.setdefault(keys[0], []).append(i)

            async def in_order(indices: list[int]) -> None:
                for i in indices:
                    replies[i] = await script(keys=jobs[i][0], args=jobs[i][1])

            ended = await asyncio.gather(*map(in_order, by_record.values()), return_exceptions=True)
            for outcome in ended:  # every call has ended: none is left running with its error
                if isinstance(outcome, BaseException):
                    raise outcome
            return [record_members(reply) for reply in replies]

        done, result, exc = await self._on_primary(join)
        if not done:
            raise self._failure(exc)
        return cast("list[list[tuple[str, float]]] | None", result)

    async def acquire_slot(self, key: str, cap: int, lease_ms: int, token: str) -> str:
        """Take the lease ``token`` in ``key`` under ``cap`` (see :meth:`Limiter.acquire_slot`)."""

        async def acquire() -> Any:
            io = self._slot_io(key)
            return None if io is None else await io[1][0](keys=[io[0]], args=[cap, lease_ms, token])

        return self._slot_mode(*(await self._on_primary(acquire)))

    async def renew_slot(self, key: str, token: str, lease_ms: int) -> bool:
        """Extend a lease; whether the storage answered."""

        async def renew() -> Any:
            io = self._slot_io(key)
            return None if io is None else await io[1][1](keys=[io[0]], args=[lease_ms, token])

        return (await self._on_primary(renew))[0]

    async def release_slot(self, key: str, token: str) -> bool:
        """Remove a lease; whether the storage answered."""

        async def release() -> Any:
            io = self._slot_io(key)
            return None if io is None else await io[1][2](keys=[io[0]], args=[token])

        return (await self._on_primary(release))[0]

    async def probe(self, timeout: float = 2.0) -> bool:
        """Ask the shared storage once whether it answers (at startup, so that an unreachable
        Redis is reported before the first request rather than at it); log a warning naming the
        outage policy that applies until it does. Never raises; ``True`` for memory storage."""
        if not self.remote:
            return True
        answered, reason = False, f"no answer within {timeout:g} s"
        with anyio.move_on_after(timeout):
            try:
                if self._primary is None:
                    self._build_primary()
                answered = bool(await self._primary.check())
                reason = "it refused the check"
            except Exception as exc:  # the storage's own error: reported, never raised
                reason = type(exc).__name__
        if not answered:
            logger.warning(
                "distillguard: the limit storage does not answer at startup (%s); the outage policy %r "
                "applies until it does",
                reason,
                self.config.outage,
            )
        return answered

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
            nodes = getattr(client, "nodes_manager", None)
            if nodes is not None and hasattr(nodes, "aclose"):
                # A cluster client that a failed node marked for re-initialisation closes
                # nothing in ``aclose``: close its nodes' connections here.
                await nodes.aclose()
                await nodes.aclose("startup_nodes")

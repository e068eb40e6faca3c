"""What the sync and async limiters share: outcomes, window keys, the charging script, the outage
bookkeeping and the storages."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from limits.aio.strategies import STRATEGIES as ASYNC_STRATEGIES
from limits.errors import StorageError
from limits.strategies import STRATEGIES

from ..errors import ConfigurationError
from ._script import (
    ACQUIRE_SLOT_LUA,
    CHARGE_WINDOWS_LUA,
    JOIN_RECORD_LUA,
    LOAD_STATE_LUA,
    RELEASE_SLOT_LUA,
    RENEW_SLOT_LUA,
    SAVE_STATE_LUA,
    outcomes,
    script_args,
    scriptable,
)
from ._table import BoundedTable
from ._windows import WindowKeys, charge_window
from .config import LimitConfig
from .effects import UNREAD, JoinRecord
from .memory import AsyncBoundedMemoryStorage, BoundedMemoryStorage
from .outage import CircuitBreaker, LimiterStats
from .plan import LimitCheck, LimitOutcome
from .storage import build_storage, builds_lazily, is_memory

__all__ = ["LimiterBase", "outcome_of", "record_members", "with_error"]

logger = logging.getLogger("distillguard")


def outcome_of(
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


def with_error(outcome: LimitOutcome, error: str) -> LimitOutcome:
    return LimitOutcome(
        check=outcome.check,
        allowed=outcome.allowed,
        remaining=outcome.remaining,
        reset_at=outcome.reset_at,
        error=error,
        mode=outcome.mode,
        charged=outcome.charged,
    )


def record_members(reply: Any) -> list[tuple[str, float]]:
    """A record script's reply (members and times, flat) as ``[(member, seen), ...]``; entries
    that are not a member and a time are skipped."""
    out: list[tuple[str, float]] = []
    if not isinstance(reply, (list, tuple)):
        return out
    for member, seen in zip(reply[0::2], reply[1::2], strict=False):
        if isinstance(member, bytes):
            member = member.decode("utf-8", "replace")
        try:
            out.append((str(member), float(seen)))
        except (TypeError, ValueError):
            continue
    return out


class LimiterBase:
    """State shared by :class:`~.limiter.Limiter` and :class:`~.limiter.AsyncLimiter`."""

    def __init__(
        self,
        config: LimitConfig,
        stats: LimiterStats,
        *,
        asynchronous: bool,
        table: BoundedTable | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.breaker = CircuitBreaker(
            threshold=config.breaker_threshold,
            base_delay=config.breaker_base_delay,
            max_delay=config.breaker_max_delay,
            stats=stats,
        )
        # the memory counters (or the outage fallback): one table per guard, whatever the adapter
        self.local = build_storage(
            "memory://", asynchronous=asynchronous, max_keys=config.memory_max_keys, table=table
        )
        self.remote = not is_memory(config.storage_uri)
        self._primary: Any = None if self.remote else self.local
        self._asynchronous = asynchronous
        factory: dict[str, Any] = dict(ASYNC_STRATEGIES if asynchronous else STRATEGIES)
        self._local_strategies = {name: cls(self.local) for name, cls in factory.items()}
        self._strategies: dict[str, Any] = {} if self.remote else self._local_strategies
        self._script: Any = None
        self._state_scripts: tuple[Any, Any] | None = None
        self._slot_scripts: tuple[Any, Any, Any] | None = None
        self._record_script: Any = None
        self._keys = WindowKeys()
        counters = self.local.table
        stats.evictions = lambda: counters.evictions  # no reference to the limiter: it may go
        if self.remote and not builds_lazily(config.storage_uri, asynchronous):
            self._build_primary()  # opens no connection; a misconfiguration stops the start-up

    def _build_primary(self) -> None:
        """Build the configured storage and its strategies.

        Raises:
            ConfigurationError: when the storage cannot be built from the settings, or lacks a
                strategy. At construction this stops the start-up; at first use (a sync Redis
                Cluster) it is logged as an error, and the request takes the outage path.
        """
        try:
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
                    scheme = self.config.storage_uri.split("://", 1)[0]
                    raise ConfigurationError(
                        f"the {scheme}:// limit storage lacks the {name} strategy"
                    ) from None
        except ConfigurationError as exc:
            if builds_lazily(self.config.storage_uri, self._asynchronous) and self.breaker.failures == 0:
                logger.error("distillguard: the limit storage is misconfigured: %s", exc)
            raise
        self._primary = storage
        self._strategies = strategies
        self._script = None
        self._state_scripts = None
        self._slot_scripts = None
        self._record_script = None

    @property
    def storage(self) -> Any:
        """The configured storage: built with the limiter, except a sync Redis Cluster storage,
        which connects when built and is built at first use (``None`` until then)."""
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

    def _outage(
        self, checks: tuple[LimitCheck, ...], exc: BaseException | None
    ) -> tuple[str, tuple[LimitOutcome, ...] | None]:
        """After the configured storage failed (or the breaker is open): ``(error, outcomes)``,
        the outcomes being the decision when the policy does not fall back to local counting,
        ``None`` when the windows are to be charged on the local storage."""
        mode, error = self._degraded(exc)
        if mode != "fallback":
            return error, (self._uncounted(checks[0], mode, error),)
        return error, None

    def _charge_script(
        self, storage: Any, checks: tuple[LimitCheck, ...], mode: str, connection: Callable[[], Any]
    ) -> Any:
        """The all-or-nothing charging script when it applies (``mode`` primary, on a remote
        storage that runs it for these checks), registered once on ``connection()``; ``None``
        when the windows are charged one by one."""
        if mode != "primary" or not self.remote or not scriptable(storage, checks):
            return None
        if self._script is None:
            self._script = connection().register_script(CHARGE_WINDOWS_LUA)
        return self._script

    def _redis(self) -> Any:
        """The configured storage's Redis client holder (``get_connection``, ``prefixed_key``),
        or ``None`` when it is not a Redis (memory: nothing shared)."""
        storage = self._primary
        if not self.remote or storage is None:
            return None
        holder = storage.bridge if hasattr(storage, "bridge") else storage
        if not hasattr(holder, "get_connection") or not hasattr(holder, "prefixed_key"):
            return None
        return holder

    def _state_io(self, key: str) -> tuple[str, tuple[Any, Any]] | None:
        """The prefixed key and the (load, save) scripts of a detector state, or ``None`` when
        the configured storage is not a Redis."""
        holder = self._redis()
        if holder is None:
            return None
        if self._state_scripts is None:
            connection = holder.get_connection()
            self._state_scripts = (
                connection.register_script(LOAD_STATE_LUA),
                connection.register_script(SAVE_STATE_LUA),
            )
        return holder.prefixed_key(key), self._state_scripts

    def _record_jobs(
        self, joins: tuple[JoinRecord, ...]
    ) -> tuple[Any, list[tuple[list[str], list[str]]], Any] | None:
        """The script of a shared record's visit, its ``(KEYS, ARGV)`` for each join, and a
        pipeline (no transaction) holding one call of it per join, so that all the joins of a
        request take one round trip; ``None`` when the configured storage is not a Redis. A
        cluster client's pipeline refuses scripts, and the records may live on different nodes:
        the pipeline is then ``None`` and each join is its own call. Run the pipeline with
        ``raise_on_error=False`` and read its replies with :meth:`_record_replies`."""
        holder = self._redis()
        if holder is None:
            return None
        connection = holder.get_connection()
        if self._record_script is None:
            self._record_script = connection.register_script(JOIN_RECORD_LUA)
        script = self._record_script
        prefix = holder.prefixed_key
        jobs = [
            (
                [prefix(f"distillguard-record/{join.key}")],
                [join.member, repr(float(join.seen)), repr(float(join.horizon)), str(join.cap)],
            )
            for join in joins
        ]
        if "Cluster" in type(connection).__name__:
            return script, jobs, None
        pipe = connection.pipeline(transaction=False)
        for keys, args in jobs:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return script, jobs, pipe

    @staticmethod
    def _record_replies(replies: list[Any]) -> list[list[tuple[str, float]]] | None:
        """Each record's members from a pipeline's replies; ``None`` when the script was not
        loaded on the server (after a restart or a ``SCRIPT FLUSH``: call it join by join, which
        loads it; a join is idempotent). Any other error is raised."""
        missing = False
        for reply in replies:
            if type(reply).__name__ == "NoScriptError":  # redis-py's and valkey's
                missing = True
            elif isinstance(reply, BaseException):
                raise reply
        return None if missing else [record_members(reply) for reply in replies]

    def _slot_io(self, key: str) -> tuple[str, tuple[Any, Any, Any]] | None:
        """The prefixed key and the (acquire, renew, release) scripts of a client's in-flight
        leases, or ``None`` when the configured storage is not a Redis."""
        holder = self._redis()
        if holder is None:
            return None
        if self._slot_scripts is None:
            connection = holder.get_connection()
            self._slot_scripts = (
                connection.register_script(ACQUIRE_SLOT_LUA),
                connection.register_script(RENEW_SLOT_LUA),
                connection.register_script(RELEASE_SLOT_LUA),
            )
        return holder.prefixed_key(key), self._slot_scripts

    def _slot_mode(self, done: bool, reply: Any, exc: BaseException | None) -> str:
        """What an acquisition's script reply says (see
        :class:`~distillguard.limiting.effects.AcquireSlot`): taken, full, or the outage
        policy's mode when the storage did not answer (counted as an outage decision)."""
        if done:
            if reply is None:  # not a Redis: nothing to share, count in process
                return "fallback"
            return "primary" if int(reply) == 1 else "full"
        mode, _ = self._degraded(exc)
        return mode

    def _script_args(
        self, storage: Any, checks: tuple[LimitCheck, ...], charge: bool, state: tuple[str, str] | None
    ) -> tuple[list[str], list[str | int], bool]:
        """The charging script's ``KEYS`` and ``ARGV``, with the detector state's key and known
        stamp last when ``state`` is to be read in the same round trip (and can be)."""
        keys, args = script_args(storage, checks, charge)
        io = self._state_io(state[0]) if state is not None else None
        if io is None or state is None:
            return keys, args, False
        keys.append(io[0])
        args.append(state[1])
        return keys, args, True

    @staticmethod
    def _replied(
        checks: tuple[LimitCheck, ...], replies: Any, charge: bool, read: bool
    ) -> tuple[tuple[LimitOutcome, ...], object]:
        """The script's replies: the windows' outcomes, and the state read with them (``None``
        when this replica is up to date or nothing is stored) or ``UNREAD``."""
        return outcomes(checks, replies, charge), (replies[len(checks)] or None) if read else UNREAD

    @staticmethod
    def _failure(exc: BaseException | None) -> StorageError:
        """The error to report for a storage that failed (``exc``) or was skipped (``None``)."""
        return StorageError(exc if isinstance(exc, Exception) else RuntimeError("the storage is skipped"))

    def _in_memory(
        self, storage: Any, checks: tuple[LimitCheck, ...], charge: bool, mode: str
    ) -> tuple[LimitOutcome, ...] | None:
        """Charge ``checks`` one by one on a bounded memory ``storage`` in one call per window
        (:mod:`._windows`), only reading those after a refusal (the wait for each window that
        would refuse it); ``None`` for any other storage."""
        if not isinstance(storage, (BoundedMemoryStorage, AsyncBoundedMemoryStorage)):
            return None
        table, keys = storage.table, self._keys
        out: list[LimitOutcome] = []
        for check in checks:
            outcome = charge_window(table, check, keys(check), charge, mode)
            out.append(outcome)
            if not outcome.allowed:
                charge = False
        return tuple(out)

    @staticmethod
    def _window(check: LimitCheck) -> tuple[str, int]:
        """The storage key and the expiry (seconds) of the window ``check`` is charged on."""
        item = check.item
        return item.key_for(*check.key), item.get_expiry()

    def _count_refund(self, done: bool, applied: Any) -> None:
        """Count a refund the configured storage had no way to apply."""
        if done and not applied:
            self.stats.refunds_unsupported += 1

"""Building ``limits`` storages with safe defaults, and the bounded in-memory storage.

* ``memory://`` gives :class:`BoundedMemoryStorage` (sync) or :class:`AsyncBoundedMemoryStorage`
  (async): a hard cap on tracked keys with least-recently-used eviction, lazy expiry and no
  timer thread (``limits``' own ``MemoryStorage`` has no cap and runs a timer thread).
* ``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://``, ``redis+sentinel://`` and
  the ``valkey`` equivalents go to ``limits``' storages with ``wrap_exceptions=True`` and 250 ms
  connect and read timeouts, so a Redis that accepts connections and never answers costs at most
  one timeout, never a hung request. Under ASGI the ``async+`` variant is used with redis-py's
  asyncio client (``implementation="redispy"``), so the sync and async clients take the same
  options.

``refund`` takes quota back from a window (the one thing ``limits`` has no API for); see
:mod:`distillguard.limiting.limiter` for when it is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from limits.aio.storage import (
    MovingWindowSupport as AsyncMovingWindowSupport,
    SlidingWindowCounterSupport as AsyncSlidingWindowCounterSupport,
    Storage as AsyncStorage,
)
from limits.storage import (
    MovingWindowSupport,
    SlidingWindowCounterSupport,
    Storage,
    storage_from_string,
)

from ._table import BoundedTable

__all__ = [
    "DEFAULT_TIMEOUT",
    "REMOTE_SCHEMES",
    "AsyncBoundedMemoryStorage",
    "BoundedMemoryStorage",
    "build_storage",
    "is_memory",
    "refund",
    "arefund",
]

DEFAULT_TIMEOUT = 0.25
"""Seconds to connect to, and to wait for an answer from, a remote storage."""

REMOTE_SCHEMES = (
    "redis",
    "rediss",
    "redis+unix",
    "redis+cluster",
    "redis+sentinel",
    "valkey",
    "valkeys",
    "valkey+unix",
    "valkey+cluster",
    "valkey+sentinel",
)
"""The storage schemes distillguard supports besides ``memory``."""

_REFUND_LUA = """
local amount = tonumber(ARGV[2])
if ARGV[1] == 'list' then
  local n = redis.call('llen', KEYS[1])
  if n == 0 then return 0 end
  if amount > n then amount = n end
  redis.call('lpop', KEYS[1], amount)
  return amount
end
local v = redis.call('get', KEYS[1])
if not v then return 0 end
local left = tonumber(v) - amount
if left < 0 then left = 0 end
redis.call('set', KEYS[1], left, 'KEEPTTL')
return tonumber(v) - left
"""


def is_memory(uri: str) -> bool:
    """Whether ``uri`` names the in-process memory storage."""
    return uri.split("://", 1)[0] in ("memory", "async+memory")


class BoundedMemoryStorage(Storage, MovingWindowSupport, SlidingWindowCounterSupport):
    """A ``limits`` storage in process memory with a hard cap on tracked keys.

    Args:
        max_keys: the most keys held at once; past it the least recently used key is evicted
            (its counter starts again from zero) and :attr:`evictions` grows.
        clock: the time source (unix seconds), for tests.
    """

    STORAGE_SCHEME = None

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        super().__init__(None, wrap_exceptions=True)
        self.table = BoundedTable(max_keys, clock)

    @property
    def evictions(self) -> int:
        """How many keys were evicted to stay under the cap."""
        return self.table.evictions

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.table.incr(key, expiry, amount)

    def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` back from a counter (never below zero)."""
        return self.table.decr(key, amount)

    def get(self, key: str) -> int:
        return self.table.get(key)

    def get_expiry(self, key: str) -> float:
        return self.table.get_expiry(key)

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        return self.table.reset()

    def clear(self, key: str) -> None:
        self.table.clear(key)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_entry(key, limit, expiry, amount)

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.table.get_moving_window(key, limit, expiry)

    def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_sliding_window_entry(key, limit, expiry, amount)

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.table.get_sliding_window(key, expiry)

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.table.clear_sliding_window(key, expiry)


class AsyncBoundedMemoryStorage(AsyncStorage, AsyncMovingWindowSupport, AsyncSlidingWindowCounterSupport):
    """The ``limits.aio`` face of :class:`BoundedMemoryStorage` (same table, no awaits inside)."""

    STORAGE_SCHEME = None

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        super().__init__(None, wrap_exceptions=True)
        self.table = BoundedTable(max_keys, clock)

    @property
    def evictions(self) -> int:
        """How many keys were evicted to stay under the cap."""
        return self.table.evictions

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.table.incr(key, expiry, amount)

    async def decr(self, key: str, amount: int = 1) -> int:
        """Take ``amount`` back from a counter (never below zero)."""
        return self.table.decr(key, amount)

    async def get(self, key: str) -> int:
        return self.table.get(key)

    async def get_expiry(self, key: str) -> float:
        return self.table.get_expiry(key)

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        return self.table.reset()

    async def clear(self, key: str) -> None:
        self.table.clear(key)

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_entry(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return self.table.get_moving_window(key, limit, expiry)

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.table.acquire_sliding_window_entry(key, limit, expiry, amount)

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        return self.table.get_sliding_window(key, expiry)

    async def clear_sliding_window(self, key: str, expiry: int) -> None:
        self.table.clear_sliding_window(key, expiry)


def _remote_options(
    scheme: str, options: Mapping[str, Any], key_prefix: str, asynchronous: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "socket_timeout": DEFAULT_TIMEOUT,
        "socket_connect_timeout": DEFAULT_TIMEOUT,
        "key_prefix": key_prefix,
    }
    retry = _no_retry(scheme, asynchronous)
    if retry is not None:
        out["retry"] = retry
    if scheme.endswith("+sentinel"):
        out["sentinel_kwargs"] = {
            "socket_timeout": DEFAULT_TIMEOUT,
            "socket_connect_timeout": DEFAULT_TIMEOUT,
        }
        if retry is not None:
            out["sentinel_kwargs"]["retry"] = retry
    if asynchronous and scheme.startswith("redis"):
        out["implementation"] = "redispy"
    out.update(options)
    out["wrap_exceptions"] = True
    return out


def _no_retry(scheme: str, asynchronous: bool) -> Any:
    """A policy of no client-side retries: a retry after a timeout multiplies the time a dead
    storage costs (measured: 2.9 s instead of 0.25 s through Sentinel); the breaker and the
    outage policy handle failures instead. ``None`` for clients that take no such option."""
    if scheme.endswith("+cluster"):
        return None
    try:
        if scheme.startswith("valkey"):
            from valkey.backoff import NoBackoff as ValkeyNoBackoff

            if asynchronous:
                from valkey.asyncio.retry import Retry as AsyncValkeyRetry

                return AsyncValkeyRetry(ValkeyNoBackoff(), 0)
            from valkey.retry import Retry as ValkeyRetry

            return ValkeyRetry(ValkeyNoBackoff(), 0)
        from redis.backoff import NoBackoff

        if asynchronous:
            from redis.asyncio.retry import Retry as AsyncRetry

            return AsyncRetry(NoBackoff(), 0)
        from redis.retry import Retry

        return Retry(NoBackoff(), 0)
    except ImportError:
        return None


def build_storage(
    uri: str,
    options: Mapping[str, Any] | None = None,
    *,
    asynchronous: bool,
    max_keys: int = 100_000,
    key_prefix: str = "dg",
) -> Any:
    """Build the storage for ``uri``.

    Args:
        uri: ``memory://`` or one of :data:`REMOTE_SCHEMES` (without ``async+``).
        options: extra options for the ``limits`` storage (they override the defaults).
        asynchronous: build the ``limits.aio`` variant (for ASGI).
        max_keys: the key cap of the memory storage.
        key_prefix: the namespace of the counters in a remote storage.

    Redis storages open no connection here (cluster storages do: build them lazily).
    """
    scheme = uri.split("://", 1)[0]
    if scheme == "memory":
        return AsyncBoundedMemoryStorage(max_keys) if asynchronous else BoundedMemoryStorage(max_keys)
    merged = _remote_options(scheme, options or {}, key_prefix, asynchronous)
    if asynchronous and scheme in ("redis", "rediss", "redis+unix") and "connection_pool" not in merged:
        merged["connection_pool"] = _blocking_pool(uri.replace("redis+unix", "unix"), merged)
    return storage_from_string(("async+" if asynchronous else "") + uri, **merged)


def _blocking_pool(uri: str, options: dict[str, Any]) -> Any:
    """A bounded asyncio pool: past ``max_connections`` (64) requests wait up to
    ``pool_timeout`` (1 s) for a connection instead of opening more. An unbounded pool opens one
    connection per concurrent request, and a burst of connects on a busy event loop overruns the
    250 ms connect timeout (measured: 90 of 200 concurrent requests fell back)."""
    from redis.asyncio import BlockingConnectionPool

    max_connections = int(options.pop("max_connections", 64))
    pool_timeout = float(options.pop("pool_timeout", 1.0))
    return BlockingConnectionPool.from_url(
        uri,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
        retry=options.get("retry"),
    )


def _redis_key(storage: Any, strategy: str, key: str) -> str:
    if strategy == "sliding-window-counter":
        key = storage._current_window_key(key)
    return (
        str(storage.prefixed_key(key))
        if hasattr(storage, "prefixed_key")
        else storage.bridge.prefixed_key(key)
    )


def refund(storage: Any, strategy: str, key: str, expiry: int, amount: int) -> bool:
    """Take ``amount`` back from the window ``key`` of a sync storage.

    Returns ``False`` when the storage has no way to do it (then nothing changed).
    """
    if amount <= 0:
        return True
    if isinstance(storage, BoundedMemoryStorage):
        table = storage.table
        if strategy == "moving-window":
            table.pop_entries(key, amount)
        elif strategy == "sliding-window-counter":
            table.refund_sliding(key, expiry, amount)
        else:
            table.decr(key, amount)
        return True
    if not hasattr(storage, "get_connection") or not hasattr(storage, "prefixed_key"):
        return False
    script = getattr(storage, "_dg_refund", None)
    if script is None:
        script = storage.get_connection().register_script(_REFUND_LUA)
        storage._dg_refund = script
    kind = "list" if strategy == "moving-window" else "counter"
    script([_redis_key(storage, strategy, key)], [kind, amount])
    return True


async def arefund(storage: Any, strategy: str, key: str, expiry: int, amount: int) -> bool:
    """Take ``amount`` back from the window ``key`` of an async storage (see :func:`refund`)."""
    if amount <= 0:
        return True
    if isinstance(storage, AsyncBoundedMemoryStorage):
        table = storage.table
        if strategy == "moving-window":
            table.pop_entries(key, amount)
        elif strategy == "sliding-window-counter":
            table.refund_sliding(key, expiry, amount)
        else:
            table.decr(key, amount)
        return True
    bridge = getattr(storage, "bridge", None)
    if bridge is None or not hasattr(bridge, "get_connection"):
        return False
    script = getattr(storage, "_dg_refund", None)
    if script is None:
        script = bridge.get_connection().register_script(_REFUND_LUA)
        storage._dg_refund = script
    kind = "list" if strategy == "moving-window" else "counter"
    if strategy == "sliding-window-counter":
        key = storage._current_window_key(key)
    try:
        await script(keys=[bridge.prefixed_key(key)], args=[kind, amount])
    except bridge.base_exceptions as exc:
        from limits.errors import StorageError

        raise StorageError(exc) from exc
    return True

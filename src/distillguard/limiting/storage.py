"""Building ``limits`` storages with safe defaults.

* ``memory://`` gives :class:`BoundedMemoryStorage` (sync) or :class:`AsyncBoundedMemoryStorage`
  (async): a hard cap on tracked keys with least-recently-used eviction, lazy expiry and no
  timer thread (``limits``' own ``MemoryStorage`` has no cap and runs a timer thread).
* ``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://``, ``redis+sentinel://`` and
  the ``valkey`` equivalents go to ``limits``' storages with ``wrap_exceptions=True`` and 250 ms
  connect and read timeouts, so a Redis that accepts connections and never answers costs at most
  one timeout, never a hung request. Under ASGI the ``async+`` variant is used with redis-py's
  asyncio client (``implementation="redispy"``), so the sync and async clients take the same
  options.

The memory storage lives in :mod:`.memory` and refunds in :mod:`.refunds` (both re-exported
here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limits.storage import storage_from_string

from .memory import AsyncBoundedMemoryStorage, BoundedMemoryStorage
from .refunds import arefund, refund

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


def is_memory(uri: str) -> bool:
    """Whether ``uri`` names the in-process memory storage."""
    return uri.split("://", 1)[0] in ("memory", "async+memory")


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

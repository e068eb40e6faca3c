"""Building ``limits`` storages with safe defaults.

* ``memory://`` gives :class:`BoundedMemoryStorage` (sync) or :class:`AsyncBoundedMemoryStorage`
  (async): a hard cap on tracked keys with least-recently-used eviction, lazy expiry and no
  timer thread (``limits``' own ``MemoryStorage`` has no cap and runs a timer thread).
* ``redis://``, ``rediss://``, ``redis+unix://``, ``redis+cluster://``, ``redis+sentinel://`` and
  the ``valkey`` equivalents go to ``limits``' storages with ``wrap_exceptions=True`` and 250 ms
  connect and read timeouts, so a Redis that accepts connections and never answers costs at most
  one timeout, never a hung request. Under ASGI the ``async+`` variant is used with redis-py's
  asyncio client (``implementation="redispy"``), so the sync and async clients take the same
  options; for a single Redis its bounded pool gets every connection option (credentials,
  ``ssl_*``...) exactly as the sync client's ``from_url`` does.

Any other scheme is refused when the config is built (:func:`check_storage_uri`), as is a
missing driver: ``limits`` would only fail at the first request, and the guard would then count
a configuration mistake as a storage outage for as long as the process runs. The storage itself
is built with the limiter (:func:`build_storage`, except a sync Redis Cluster storage, which
connects when built), so the mistakes only a build reveals (an option the client does not take,
a bad query parameter) also stop the start-up.

The memory storage lives in :mod:`.memory` and refunds in :mod:`.refunds` (both re-exported
here).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import limits.aio.storage
import limits.storage
from limits.errors import ConfigurationError as LimitsConfigurationError
from limits.storage import storage_from_string

from ..errors import ConfigurationError
from ._table import BoundedTable
from .memory import AsyncBoundedMemoryStorage, BoundedMemoryStorage
from .refunds import arefund, refund

__all__ = [
    "DEFAULT_TIMEOUT",
    "REMOTE_SCHEMES",
    "AsyncBoundedMemoryStorage",
    "BoundedMemoryStorage",
    "build_storage",
    "builds_lazily",
    "check_storage_uri",
    "hash_tag",
    "is_cluster",
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

_SINGLE = ("redis", "rediss", "redis+unix", "valkey", "valkeys", "valkey+unix")
"""The schemes of a single server, whose client takes the connection options directly."""

_NOT_CONNECTION = frozenset(
    {
        "key_prefix",
        "wrap_exceptions",
        "implementation",
        "connection_pool",
        "single_connection_client",
        "auto_close_connection_pool",
    }
)
"""Options that are not the connection's: ``limits``' own, and the ones redis-py's
``Redis.from_url`` keeps for the client instead of passing them to the pool."""


def check_storage_uri(uri: str, options: Mapping[str, Any]) -> None:
    """Refuse a storage URI the guard cannot use, before any request depends on it.

    Checks the scheme (``memory`` or one of :data:`REMOTE_SCHEMES`), that its driver imports at
    the version ``limits`` needs for both adapters, that every server has a host and a port (the
    async storage parses the URI that way; ``redis://localhost`` would fail there only), and
    that a Sentinel URI names its service.

    Raises:
        ConfigurationError: with a message that never repeats the URI (it may hold a password).
    """
    scheme = uri.split("://", 1)[0]
    if scheme == "memory":
        return
    if scheme not in REMOTE_SCHEMES:
        supported = ", ".join(f"{s}://" for s in ("memory", *REMOTE_SCHEMES))
        raise ConfigurationError(f"unsupported storage_uri scheme {scheme!r}; use one of {supported}")
    _check_driver(scheme)
    try:
        parsed = urlparse(uri)
        if not scheme.endswith("+unix"):
            _check_servers(scheme, parsed.netloc)
    except ValueError as exc:
        raise ConfigurationError(
            f"storage_uri ({scheme}://) cannot be parsed: {type(exc).__name__}"
        ) from None
    if scheme.endswith("+sentinel") and not (parsed.path.strip("/") or options.get("service_name")):
        raise ConfigurationError(
            f"storage_uri {scheme}:// needs the service name, as its path (e.g. "
            f"{scheme}://127.0.0.1:26379/mymaster) or as storage_options['service_name']"
        )


def _check_servers(scheme: str, netloc: str) -> None:
    """Every ``host:port`` after the credentials, as ``limits`` parses them."""
    servers = netloc[netloc.find("@") + 1 :]
    for server in filter(None, (s.strip() for s in servers.split(","))):
        location = urlparse(f"fake://{server}")
        if location.hostname is None or location.port is None:
            raise ConfigurationError(
                f"storage_uri {scheme}:// needs a host and a port for every server "
                f"(e.g. {scheme}://127.0.0.1:6379)"
            )


def _check_driver(scheme: str) -> None:
    """The client library of ``scheme`` imports, at the version both ``limits`` storages need
    (the sync one and the ``async+`` one, the latter with redis-py's asyncio client)."""
    driver = "valkey" if scheme.startswith("valkey") else "redis"
    modules = [driver, f"{driver}.sentinel"] if scheme.endswith("+sentinel") else [driver]
    for module in modules:
        needed = [
            _release(str(version))
            for cls in _storage_classes(scheme)
            if isinstance(deps := getattr(cls, "DEPENDENCIES", None), dict) and (version := deps.get(module))
        ]
        minimum = max(needed, default=None)
        hint = f"the {driver!r} package" + (f" >= {'.'.join(map(str, minimum))}" if minimum else "")
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigurationError(
                f"storage_uri {scheme}:// needs {hint}: install distillguard[redis]"
            ) from None
        found = _installed(driver)  # None without package metadata: nothing to compare
        if minimum is not None and found is not None and _release(found) < minimum:
            raise ConfigurationError(
                f"storage_uri {scheme}:// needs {hint}, found {found}: install distillguard[redis]"
            )


def _storage_classes(scheme: str) -> tuple[type[Any], type[Any]]:
    """The sync and async ``limits`` storages of ``scheme``."""
    if scheme.endswith("+sentinel"):
        return limits.storage.RedisSentinelStorage, limits.aio.storage.RedisSentinelStorage
    if scheme.endswith("+cluster"):
        return limits.storage.RedisClusterStorage, limits.aio.storage.RedisClusterStorage
    return limits.storage.RedisStorage, limits.aio.storage.RedisStorage


def _installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """``"5.2.0rc1"`` -> ``(5, 2, 0)``: the release numbers, enough to compare minimums."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def builds_lazily(uri: str, asynchronous: bool) -> bool:
    """Whether the storage of ``uri`` is built at its first use rather than with the limiter:
    redis-py's sync cluster client connects to the cluster when built, and a cluster that is
    down at start-up must take the outage path, not stop the process."""
    return not asynchronous and uri.split("://", 1)[0].endswith("+cluster")


def is_memory(uri: str) -> bool:
    """Whether ``uri`` names the in-process memory storage."""
    return uri.split("://", 1)[0] in ("memory", "async+memory")


def is_cluster(uri: str) -> bool:
    """Whether ``uri`` names a Redis (or Valkey) Cluster."""
    return uri.split("://", 1)[0].lower().removeprefix("async+").endswith("+cluster")


def hash_tag(client_id: str) -> str:
    """The Redis Cluster hash tag of ``client_id``'s keys: every key holding it (its windows,
    its penalty box and level, its detector state) hashes to one slot, so that one script
    charges them and reads the state in one round trip, on Redis' own clock."""
    return "{" + client_id.replace("{", "%7B").replace("}", "%7D") + "}"


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
    table: BoundedTable | None = None,
) -> Any:
    """Build the storage for ``uri``.

    Args:
        uri: ``memory://`` or one of :data:`REMOTE_SCHEMES` (without ``async+``).
        options: extra options for the ``limits`` storage (they override the defaults).
        asynchronous: build the ``limits.aio`` variant (for ASGI).
        max_keys: the key cap of the memory storage.
        key_prefix: the namespace of the counters in a remote storage.
        table: for ``memory://``, the counter table to share (a new one by default).

    Redis storages open no connection here (cluster storages do: build them lazily). For a
    single server, one connection object is made (not connected) from the pool's settings, so an
    option the client does not take fails here rather than at every request.

    Raises:
        ConfigurationError: when ``limits`` or the client refuses the URI or the options.
    """
    scheme = uri.split("://", 1)[0]
    if scheme == "memory":
        if asynchronous:
            return AsyncBoundedMemoryStorage(max_keys, table=table)
        return BoundedMemoryStorage(max_keys, table=table)
    merged = _remote_options(scheme, options or {}, key_prefix, asynchronous)
    try:
        if asynchronous and scheme in ("redis", "rediss", "redis+unix") and "connection_pool" not in merged:
            merged["connection_pool"] = _blocking_pool(uri.replace("redis+unix", "unix"), merged)
        else:
            merged.pop("pool_timeout", None)  # only the bounded asyncio pool waits for a connection
        storage: Any = storage_from_string(("async+" if asynchronous else "") + uri, **merged)
    except (LimitsConfigurationError, ValueError, TypeError) as exc:
        raise _refused(scheme, exc, uri, options) from None
    if scheme in _SINGLE:
        pool = (storage.bridge.storage if asynchronous else storage.storage).connection_pool
        try:  # the settings every connection will get; nothing is connected
            pool.connection_class(**pool.connection_kwargs)
        except Exception as exc:  # an unknown option (TypeError), a bad ssl_cert_reqs (RedisError)
            raise _refused(scheme, exc, uri, options) from None
    return storage


def _refused(
    scheme: str, exc: BaseException, uri: str, options: Mapping[str, Any] | None
) -> ConfigurationError:
    """The configuration error for a storage that cannot be built, without the credentials."""
    message = str(exc)
    secrets = [urlparse(uri).password, *((options or {}).get(k) for k in ("password", "username"))]
    for secret in secrets:
        if isinstance(secret, str) and secret:
            message = message.replace(secret, "***")
    return ConfigurationError(
        f"cannot build the {scheme}:// limit storage from storage_uri and storage_options: "
        f"{type(exc).__name__}: {message}"
    )


def _blocking_pool(uri: str, options: dict[str, Any]) -> Any:
    """A bounded asyncio pool: past ``max_connections`` (64) requests wait up to
    ``pool_timeout`` (1 s) for a connection instead of opening more. An unbounded pool opens one
    connection per concurrent request, and a burst of connects on a busy event loop overruns the
    250 ms connect timeout (measured: 90 of 200 concurrent requests fell back).

    The pool gets every connection option, as the sync storage's ``redis.from_url(uri,
    **options)`` passes them (``password``, ``username``, ``ssl_*``, ``db``...): redis-py's
    client ignores the options given next to a ``connection_pool``, so an option left out here
    never reaches Redis. As in ``from_url``, a setting also in the URI takes the URI's value."""
    from redis.asyncio import BlockingConnectionPool

    max_connections = int(options.pop("max_connections", 64))
    pool_timeout = float(options.pop("pool_timeout", 1.0))
    connection = {k: v for k, v in options.items() if k not in _NOT_CONNECTION}
    return BlockingConnectionPool.from_url(
        uri, max_connections=max_connections, timeout=pool_timeout, **connection
    )

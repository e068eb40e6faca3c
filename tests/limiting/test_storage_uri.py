"""Storage URIs and options are checked when the guard starts: unsupported schemes, missing
drivers, servers without a port, Sentinel without a service and options the client refuses are
configuration errors (never a permanent "outage"); the supported schemes still build without
connecting; the ASGI pool gets the same connection settings as the WSGI client."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from distillguard import ConfigurationError, Guard, LimitConfig
from distillguard.limiting.storage import build_storage

BAD_URIS = [
    "memcached://localhost:11211",
    "mongodb://localhost:27017",
    "mongodb+srv://cluster.example.com",
    "bogus://x",
    "Memory://",
    "redis://127.0.0.1/0",  # no port: the async storage cannot parse it
    "redis+cluster://127.0.0.1:7000,127.0.0.1",
    "redis://127.0.0.1:notaport/0",
    "redis+sentinel://127.0.0.1:26379",  # no service name
    "valkey+sentinel://127.0.0.1:26379/",
    "redis:127.0.0.1:6379",
]

GOOD_URIS = [
    "memory://",
    "redis://127.0.0.1:6379/0",
    "redis://",
    "rediss://:pw@127.0.0.1:6380/1",
    "redis+unix:///tmp/redis.sock",
    "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    "valkey://127.0.0.1:6379",
    "valkeys://127.0.0.1:6380",
    "valkey+unix:///tmp/valkey.sock",
    "valkey+sentinel://127.0.0.1:26379/mymaster",
    "valkey+cluster://127.0.0.1:7000",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_unusable_storage_uris_fail_at_construction(uri: str) -> None:
    """Each URI raises ConfigurationError when the config is built (before, they were accepted
    and every request then showed ``limiter:fallback:ConfigurationError``)."""
    with pytest.raises(ConfigurationError, match="storage_uri"):
        LimitConfig(storage_uri=uri)


def test_the_refusal_names_the_supported_schemes() -> None:
    with pytest.raises(ConfigurationError) as info:
        LimitConfig(storage_uri="memcached://localhost:11211")
    message = str(info.value)
    assert "'memcached'" in message and "redis+sentinel://" in message and "valkey://" in message


def test_sentinel_service_name_may_come_from_the_options() -> None:
    config = LimitConfig(
        storage_uri="redis+sentinel://127.0.0.1:26379", storage_options={"service_name": "mymaster"}
    )
    assert config.storage_uri.startswith("redis+sentinel")


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_supported_schemes_construct_without_connecting(uri: str) -> None:
    """The config, the guard and both adapters' limiters build for every supported scheme (no
    server listens on these addresses: nothing is connected at start-up). Only the sync Redis
    Cluster storage, which connects when built, waits for the first request."""
    guard = Guard(jwt=None, limits=LimitConfig(storage_uri=uri))
    sync = guard.sync_performer().limiter
    aio = guard.async_performer().limiter
    built = (sync.storage is not None, aio.storage is not None)
    assert built == (("+cluster" not in uri), True)


@pytest.mark.parametrize(
    ("uri", "driver", "missing"),
    [
        ("valkey://127.0.0.1:6379", "valkey", "valkey"),
        ("valkey+cluster://127.0.0.1:7000", "valkey", "valkey"),
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
        ("redis+sentinel://127.0.0.1:26379/mymaster", "redis", "redis.sentinel"),
    ],
)
def test_a_missing_driver_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, uri: str, driver: str, missing: str
) -> None:
    """Without its client library (its import made to fail) the scheme is refused at
    construction, with the package to install; the other schemes are unaffected."""
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ConfigurationError, match=rf"needs the '{driver}' package .*distillguard\[redis\]"):
        LimitConfig(storage_uri=uri)
    other = "redis://127.0.0.1:6379/0" if driver == "valkey" else "valkey://127.0.0.1:6379"
    assert LimitConfig(storage_uri=other).storage_uri == other


@pytest.mark.parametrize("adapter", ["sync", "async"])
@pytest.mark.parametrize(
    ("uri", "options", "fragment"),
    [
        ("redis://127.0.0.1:6379/0", {"pasword": "x"}, "pasword"),
        ("valkey://127.0.0.1:6379", {"pasword": "x"}, "pasword"),
        ("rediss://127.0.0.1:6380/0", {"ssl_cert_reqs": "sometimes"}, "sometimes"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", {}, "socket_timeout"),
    ],
)
def test_options_the_client_refuses_stop_the_start_up(
    adapter: str, uri: str, options: dict[str, Any], fragment: str
) -> None:
    """A misspelt option, a bad ``ssl_cert_reqs`` or a bad query parameter used to fail every
    connection (a permanent outage); building the adapter's limiter now refuses them."""
    guard = Guard(jwt=None, limits=LimitConfig(storage_uri=uri, storage_options=options))
    performer = guard.sync_performer if adapter == "sync" else guard.async_performer
    with pytest.raises(ConfigurationError, match=fragment):
        performer()


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("redis://:uri-secret@127.0.0.1:notaport/0", {}),
        ("redis://:uri-secret@127.0.0.1:6379/0?socket_timeout=soon", {"password": "opt-secret"}),
        ("redis://127.0.0.1:6379/0", {"password": "opt-secret", "pasword": "opt-secret"}),
    ],
)
def test_refusals_never_show_the_password(uri: str, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(jwt=None, limits=LimitConfig(storage_uri=uri, storage_options=options)).async_performer()
    assert "secret" not in str(info.value) and info.value.__cause__ is None


TLS = {
    "password": "pw",
    "username": "limiter",
    "ssl_ca_certs": "/etc/ssl/ca.pem",
    "ssl_certfile": "/etc/ssl/client.pem",
    "ssl_keyfile": "/etc/ssl/client.key",
    "ssl_cert_reqs": "required",
    "ssl_check_hostname": True,
    "client_name": "distillguard",
    "health_check_interval": 30,
}


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("rediss://127.0.0.1:6380/2", TLS),
        ("redis://127.0.0.1:6379/3?client_name=from-uri", {"password": "pw", "socket_timeout": 1.5}),
        ("redis://:uri-pw@127.0.0.1:6379/0", {"password": "option-pw", "db": 4}),
        ("redis+unix:///tmp/redis.sock?db=5", {"password": "pw"}),
    ],
)
def test_async_pool_gets_the_connection_settings_of_the_sync_client(
    uri: str, options: dict[str, Any]
) -> None:
    """The ASGI pool's connection class and settings equal the WSGI client's (the retry policy
    aside: one is asyncio's), ``ssl_*`` and credentials included; a setting in both the URI
    and the options takes the URI's value on both (redis-py's ``from_url`` rule)."""
    sync_pool = build_storage(uri, options, asynchronous=False).storage.connection_pool
    async_pool = build_storage(uri, options, asynchronous=True).bridge.storage.connection_pool
    assert async_pool.connection_class.__name__ == sync_pool.connection_class.__name__
    sync_kwargs = {k: v for k, v in sync_pool.connection_kwargs.items() if k != "retry"}
    async_kwargs = {k: v for k, v in async_pool.connection_kwargs.items() if k != "retry"}
    assert async_kwargs == sync_kwargs
    assert async_kwargs["password"] == ("uri-pw" if "uri-pw" in uri else "pw")
    if uri.startswith("rediss"):
        assert async_pool.connection_class.__name__ == "SSLConnection"
        assert {k: async_kwargs[k] for k in TLS} == TLS

"""Fixtures shared by the whole suite.

Keys and tokens:
    ``keys`` (all of them), ``hs256_secret``, ``rsa_keypair``, ``ec_keypair``,
    ``ed25519_keypair`` (session-scoped, generated once) and ``make_token`` (the factory
    :func:`tests.helpers.make_token`: ``make_token(sub="x", exp=None, headers={"kid": "k1"},
    key=rsa_keypair)``).

Telemetry:
    ``span_exporter``: an ``InMemorySpanExporter`` fed by a private ``TracerProvider``
    (``tracer_provider``); the global provider is never touched. Read spans with
    ``span_exporter.get_finished_spans()`` or :func:`tests.helpers.guard_spans`.

Guards:
    ``guard_factory(**overrides)``: a :class:`~distillguard.Guard` accepting HS256 tokens from
    :func:`make_token`, with generous limits (``1000/minute``) and the private tracer provider;
    any ``Guard`` keyword overrides the default (``jwt=jwt_config(algorithms=["RS256"], ...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from distillguard import Guard, LimitConfig
from tests.helpers import KeyPair, Keys, jwt_config, keys as _keys, make_token as _make_token


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Every test key (HMAC secret, RSA, EC P-256, Ed25519)."""
    return _keys()


@pytest.fixture(scope="session")
def hs256_secret(keys: Keys) -> bytes:
    """The HMAC secret (at least 32 bytes)."""
    return keys.hs256


@pytest.fixture(scope="session")
def rsa_keypair(keys: Keys) -> KeyPair:
    """An RSA 2048 key pair (RS256)."""
    return keys.rsa


@pytest.fixture(scope="session")
def ec_keypair(keys: Keys) -> KeyPair:
    """An EC P-256 key pair (ES256)."""
    return keys.ec


@pytest.fixture(scope="session")
def ed25519_keypair(keys: Keys) -> KeyPair:
    """An Ed25519 key pair (EdDSA)."""
    return keys.ed25519


@pytest.fixture
def make_token() -> Callable[..., str]:
    """The token factory (see :func:`tests.helpers.make_token`)."""
    return _make_token


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter; pass ``tracer_provider`` to the code under test."""
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A private provider exporting to ``span_exporter`` synchronously (never set globally)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def guard_factory(tracer_provider: TracerProvider) -> Callable[..., Guard]:
    """Build a :class:`~distillguard.Guard` with test defaults; keywords override them."""

    def build(**overrides: Any) -> Guard:
        options: dict[str, Any] = {
            "jwt": jwt_config(),
            "limits": LimitConfig(default="1000/minute"),
            "tracer_provider": tracer_provider,
        }
        options.update(overrides)
        return Guard(**options)

    return build

"""A real ``redis-server`` per test module, and a black-hole TCP server (from :mod:`tests.servers`).

``redis_server`` starts ``redis-server`` on a free port (no persistence) and can stop and
restart it on the same port, for outage tests. Without the binary the tests are skipped
locally, but fail loudly in CI (``CI=true``): they must run there.

``closing`` collects the harnesses a test builds and closes them after it.

``black_hole`` is a TCP server that accepts connections and never answers (the worst Redis
failure: no refusal, no reply).

``env`` clears the ``DISTILLGUARD_*`` variables for the commands' tests; ``env(NAME=value)``
sets ``DISTILLGUARD_NAME``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.limiting.apps import Harness, close_harnesses as close_harnesses
from tests.servers import BlackHole, RedisServer, free_port, require_redis


@pytest.fixture(scope="module")
def redis_module_server() -> Iterator[RedisServer]:
    """A redis-server shared by one test module."""
    require_redis()
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_module_server: RedisServer) -> Iterator[RedisServer]:
    """A running, empty redis-server (restarted if a previous test stopped it)."""
    if not redis_module_server.ping():
        redis_module_server.start()
    redis_module_server.flush()
    yield redis_module_server


@pytest.fixture
def closing() -> Iterator[list[Harness]]:
    """A list the test appends its harnesses to; each is closed after the test."""
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A port that accepts TCP connections and never answers."""
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean ``DISTILLGUARD_*`` environment; ``env(NAME=value)`` sets variables."""
    import os

    for name in [n for n in os.environ if n.startswith("DISTILLGUARD_")]:
        monkeypatch.delenv(name)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"DISTILLGUARD_{name}", value)

    yield setenv

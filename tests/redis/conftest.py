"""A real ``redis-server`` per test module, and a black-hole TCP server.

``redis_server`` starts ``redis-server`` on a free port (no persistence) and can stop and
restart it on the same port, for outage tests. Without the binary the tests are skipped
locally, but fail loudly in CI (``CI=true``): they must run there.

``black_hole`` is a TCP server that accepts connections and never answers (the worst Redis
failure: no refusal, no reply).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.limiting.apps import OPEN

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``port`` (start, stop, restart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``."""
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def ping(self) -> bool:
        """Whether the server answers ``PING``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (connections are refused afterwards)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Start the server again on the same port (empty)."""
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against the server; return its output."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout

    def flush(self) -> None:
        """Empty the database."""
        self.cli("FLUSHALL")


def _require_redis() -> None:
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is missing in CI: .ci/run must install it", pytrace=False)
        pytest.skip("redis-server is not installed")


@pytest.fixture(scope="module")
def redis_module_server() -> Iterator[RedisServer]:
    """A redis-server shared by one test module."""
    _require_redis()
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


class BlackHole:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop = True
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A port that accepts TCP connections and never answers."""
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.fixture(autouse=True)
def close_harnesses() -> Iterator[None]:
    """Close the ASGI harnesses a test created (their Redis connections and event loops)."""
    before = list(OPEN)
    yield
    for harness in [h for h in OPEN if h not in before]:
        harness.close()

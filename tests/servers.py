"""Real servers on loopback for the tests: ports, uvicorn, ``redis-server`` and black holes.

``free_port()``
    A TCP port on 127.0.0.1 that nobody listens on right now.
``serve_in_thread(app, lifespan="off")``
    A context manager running ``app`` under a real uvicorn server in a daemon thread; yields the
    base URL (``http://127.0.0.1:<port>``) once the server has started, stops it afterwards.
``wait_until_serving(port, process, timeout=...)``
    Waits until a server process (e.g. ``python -m uvicorn ...``) answers ``GET /health``;
    raises with the process's stderr if it exits first.
``RedisServer`` / ``require_redis()``
    One ``redis-server`` process on a port (start, stop, restart, flush, ``redis-cli``); the
    check that skips without the binary locally but fails in CI (``CI=true``).
``BlackHole``
    A TCP server that accepts connections and never answers (a hung Redis or JWKS endpoint:
    no refusal, no reply).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
import uvicorn

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, *, lifespan: Literal["on", "off"] = "off") -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yield its base URL once it has started."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan=lifespan)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until_serving(port: int, process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """Wait until ``process`` answers ``GET /health`` on ``port`` (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"the server process exited: {stderr}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"the server process did not answer on port {port} within {timeout} s")


def require_redis() -> None:
    """Skip without ``redis-server`` locally; fail in CI, where the tests must run."""
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is missing in CI: .ci/run must install it", pytrace=False)
        pytest.skip("redis-server is not installed")


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

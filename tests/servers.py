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
``RedisCluster``
    A Redis Cluster of three ``redis-server`` masters on free ports (``redis-cli --cluster
    create``); each node can be stopped and started again with its slots.
``RedisSentinel``
    A master, its replica and one Sentinel (``redis-server --sentinel``) watching them, with a
    one-second down-after: stopping the master promotes the replica within a few seconds.
``BlackHole``
    A TCP server that accepts connections and never answers (a hung Redis or JWKS endpoint:
    no refusal, no reply).
``SlowLink``
    A TCP relay that delays what clients send (a distant Redis: every round trip costs the
    delay).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now (held open together while they
    are chosen, so the kernel cannot hand out one twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


@contextlib.contextmanager
def serve_in_thread(app: Any, *, lifespan: Literal["on", "off"] = "off", **options: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread (``options``: more ``uvicorn.Config`` settings);
    yield its base URL once it has started."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan=lifespan, **options)
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


def redis_cli(port: int, *args: str) -> str:
    """Run ``redis-cli`` against the server on ``port``; return its output."""
    command = ["redis-cli", "-p", str(port), *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    return out.stdout


def require_redis() -> None:
    """Skip without ``redis-server`` locally; fail in CI, where the tests must run."""
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is missing in CI: .ci/run must install it", pytrace=False)
        pytest.skip("redis-server is not installed")


class RedisServer:
    """One ``redis-server`` process on ``port`` (start, stop, restart)."""

    def __init__(self, port: int, options: tuple[str, ...] = ()) -> None:
        self.port = port
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        # its own working directory: a replica writes the copy it receives there (dump.rdb), and
        # a server started in a directory holding one would load it
        self.directory = tempfile.mkdtemp(prefix="redis-")
        weakref.finalize(self, shutil.rmtree, self.directory, True)

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
                "--dir",
                self.directory,
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # e.g. the port was taken meanwhile
                self.process = None
                raise RuntimeError(f"redis-server exited at startup on port {self.port}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
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
        return redis_cli(self.port, *args)

    def flush(self) -> None:
        """Empty the database."""
        self.cli("FLUSHALL")


class RedisCluster:
    """A Redis Cluster of ``size`` masters (no replicas) on free ports, its node files in
    ``directory``. A stopped node started again keeps its node file, so it takes its slots back
    (empty: nothing is persisted); ``node-timeout`` is one second, so the others mark it failed
    quickly."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        ports = free_ports(2 * size)
        for port, bus in zip(ports[:size], ports[size:], strict=True):
            options = (
                "--cluster-enabled",
                "yes",
                "--cluster-port",  # not port + 10000, which may be taken or past 65535
                str(bus),
                "--cluster-config-file",
                str(directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "1000",
            )
            self.nodes.append(RedisServer(port, options))

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port of the first node>``."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        """Start every node, assign the slots, wait until every node reports ``cluster_state:ok``."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                timeout=60,
                check=True,
            )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every running node reports the cluster healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes if node.process):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become healthy")

    def owner(self, key: str) -> RedisServer:
        """The node that holds ``key``'s hash slot."""
        slot = int(self.nodes[0].cli("CLUSTER", "KEYSLOT", key))
        for line in self.nodes[0].cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no node holds slot {slot}")

    def stored_keys(self) -> list[str]:
        """Every key of every running node."""
        return sorted(k for node in self.nodes if node.process for k in node.cli("--scan").split())

    def flush(self) -> None:
        """Empty every node."""
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master, a replica of it and one Sentinel monitoring them as ``mymaster`` (quorum 1,
    ``down-after-milliseconds`` 1000), its configuration file in ``directory``."""

    def __init__(self, directory: Path) -> None:
        master, replica, sentinel = free_ports(3)
        self.master = RedisServer(master)
        self.replica = RedisServer(replica, ("--replicaof", "127.0.0.1", str(master)))
        self.port = sentinel
        self.config = directory / "sentinel.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<sentinel port>/mymaster``."""
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def start(self) -> None:
        """Start the master, the replica and the Sentinel; wait until the Sentinel knows both."""
        self.master.start()
        self.replica.start()
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 3000\n"
        )
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if "slave" in self.cli("SENTINEL", "REPLICAS", "mymaster"):
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Sentinel did not find the replica")

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against the Sentinel."""
        return redis_cli(self.port, *args)

    def master_port(self) -> int:
        """The port of the master the Sentinel names now."""
        return int(self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster").split()[-1])

    def wait_failover(self, timeout: float = 20) -> None:
        """Wait until the Sentinel names the replica as the master and it accepts writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_port() == self.replica.port and "master" in self.replica.cli("ROLE").split()[:1]:
                return
            time.sleep(0.1)
        raise RuntimeError("the Sentinel did not promote the replica")

    def stop(self) -> None:
        """Stop the Sentinel, the replica and the master."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        self.replica.stop()
        self.master.stop()


class _Listener:
    """A TCP server on a free loopback port that hands each accepted connection to
    :meth:`_accepted` (in its accepting thread) until closed."""

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
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """What to do with a new connection (nothing: keep it open)."""

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stop = True
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


class BlackHole(_Listener):
    """A TCP server that accepts connections and never answers."""


class SlowLink(_Listener):
    """A TCP relay to ``127.0.0.1:<target>`` that holds every chunk a client sends for
    ``delay`` seconds before passing it on (a link with that much latency one way); answers come
    back at once. Each round trip through it therefore costs at least ``delay``."""

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self.accepted.append(upstream)
        threading.Thread(target=self._pump, args=(conn, upstream, self.delay), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, conn, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

"""Requests per second over HTTP: uvicorn (one worker) on loopback, loaded with ``wrk``.

Run from the repository root (needs ``wrk`` and the ``bench`` extra)::

    python -m benchmarks.http

The bare, guarded (with a recording span, and with the trace sampled out) and peer-stack Starlette
apps each run in their own uvicorn process; ``wrk`` loads them in turn, ``--rounds`` times, so
that all of them see the same machine conditions. The table gives the median of the rounds;
server CPU per request is read from ``/proc``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _apps, _peers

APPS = {
    "bare": "benchmarks._serve:bare",
    "guarded": "benchmarks._serve:guarded",
    "guarded, trace sampled out": "benchmarks._serve:guarded_unsampled",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(target: str, factory: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", target, "--port", str(port), "--log-level", "warning"]
    cmd += ["--no-access-log", *(["--factory"] if factory else [])]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{target} did not start")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.23ms``, ``1.05s``) in milliseconds."""
    number = float(re.sub(r"[a-z]+$", "", text))
    unit = text[len(text.rstrip("smu")) :]
    return number * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _wrk(port: int, script: str, seconds: int, threads: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}{_apps.PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{bad.group(1)} error responses:\n{out}")
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total}


Servers = dict[str, tuple[subprocess.Popen[bytes], int]]


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The load options (``--seconds``, ``--rounds``, ``--threads``, ``--connections``); exits
    when ``wrk`` is not installed."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    return parser


def load(servers: Servers, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Load every server with wrk in turn, ``args.rounds`` times (after a warm-up), with the
    benchmark's chat request; each run's figures plus the server's CPU per request. Stops the
    servers afterwards."""
    body = _apps.chat_body().decode()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = [[{body}]]\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {_apps.token()}"\n'
        )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        for _, port in servers.values():  # warm-up
            _wrk(port, script.name, 2, args.threads, args.connections)
        for _ in range(args.rounds):
            for name, (proc, port) in servers.items():
                before = _cpu_seconds(proc.pid)
                run = _wrk(port, script.name, args.seconds, args.threads, args.connections)
                run["cpu_us"] = (_cpu_seconds(proc.pid) - before) / run["requests"] * 1e6
                results[name].append(run)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
        os.unlink(script.name)
    return results


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__).parse_args(argv)

    servers = {name: _start(target, False) for name, target in APPS.items()}
    if _peers.available():
        servers["peer stack"] = _start("benchmarks._serve:peer", True)
    results = load(servers, args)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    command = " ".join(["python -m benchmarks.http", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"Command: `{command}` (wrk -t{args.threads} -c{args.connections} -d{args.seconds}s,"
        f" {args.rounds} rounds; uvicorn with one worker on loopback, wrk on the same machine)",
        "",
        "| app | requests/s | x bare | p50 ms | p99 ms | server CPU us/request |",
        "|---|---|---|---|---|---|",
    ]
    for name in results:
        lines.append(
            f"| {name} | {med(name, 'rps'):,.0f} | {med(name, 'rps') / med('bare', 'rps'):.2f} |"
            f" {med(name, 'p50'):.1f} | {med(name, 'p99'):.1f} | {med(name, 'cpu_us'):.0f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()

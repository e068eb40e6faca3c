"""Requests per second through the gateway: a model server, the same behind a bare
:class:`~distillguard.gateway.Gateway`, and behind the guarded gateway, loaded with ``wrk``.

Run from the repository root (needs ``wrk`` and the ``bench`` and ``gateway`` extras)::

    python -m benchmarks.gateway

The model server is the bare Starlette app of :mod:`benchmarks.http` in its own uvicorn process;
each gateway runs in another (one worker each, on loopback, wrk on the same machine). The table
gives the median of the rounds and the CPU per request of the gateway's process (the model
server's own CPU is not counted).
"""

from __future__ import annotations

import os
import statistics
import sys

from .http import _start, arguments, load


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__).parse_args(argv)
    model, model_port = _start("benchmarks._serve:bare", False)
    os.environ["DG_BENCH_UPSTREAM"] = f"http://127.0.0.1:{model_port}"
    servers = {
        "model server": (model, model_port),
        "bare gateway": _start("benchmarks._serve:gateway", True),
        "guarded gateway": _start("benchmarks._serve:guarded_gateway", True),
    }
    results = load(servers, args)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    command = " ".join(["python -m benchmarks.gateway", *(argv if argv is not None else sys.argv[1:])])
    wrk = f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.rounds} rounds"
    print(f"Command: `{command}` ({wrk})")
    print()
    print("| path | requests/s | x model server | p50 ms | p99 ms | CPU per request of that process |")
    print("|---|---|---|---|---|---|")
    base = med("model server", "rps")
    for name in servers:
        print(
            f"| {name} | {med(name, 'rps'):,.0f} | {med(name, 'rps') / base:.2f} | {med(name, 'p50'):.2f} "
            f"| {med(name, 'p99'):.2f} | {med(name, 'cpu_us'):,.0f} us |"
        )


if __name__ == "__main__":
    main()

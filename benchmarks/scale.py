"""A million identities, one request each (reliability.md M1): memory stays bounded and the
cost per request stays flat.

Every client is a new, validly signed ``sub`` sending one 1 KB chat request through the guarded
raw ASGI app of :mod:`benchmarks._apps` (JWT, two limit windows on ``memory://``, the span, the
chosen detector set). The clients come in blocks; after each block the report gives the CPU per
request of that block, the process's resident memory, and what the guard holds: keys in the
memory limit table and how many it evicted, clients tracked by the detectors, tokens cached.

    python -m benchmarks.scale                      # 1,000,000 clients in blocks of 100,000
    python -m benchmarks.scale --clients 200000 --detectors default
    python -m benchmarks.scale --write docs/benchmarks.md

Tokens are minted before each block is timed; the resident memory includes the block's tokens
(the same size every block), so its growth from block to block is what the guard keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from benchmarks import _apps
from benchmarks.overhead import machine, versions

_START, _END = "<!-- scale:start -->", "<!-- scale:end -->"


def _rss_mib() -> float:
    """The resident set size of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Scopes(Sequence[dict[str, Any]]):
    """The scope of each token's request, built when asked for (a list of a hundred thousand
    scopes would weigh on the memory measured)."""

    def __init__(self, scope: dict[str, Any], tokens: list[bytes]) -> None:
        self.scope, self.tokens = scope, tokens
        headers = scope["headers"]
        at = next(i for i, (name, _) in enumerate(headers) if name == b"authorization")
        self.before, self.after = headers[:at], headers[at + 1 :]

    def __len__(self) -> int:
        return len(self.tokens)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        request = dict(self.scope)
        request["headers"] = [*self.before, (b"authorization", self.tokens[index]), *self.after]
        return request


def _block(
    loop: asyncio.AbstractEventLoop, app: Any, scope: dict[str, Any], tokens: list[bytes], body: bytes
) -> float:
    """One request per token; the CPU time per request, microseconds."""
    scopes = _Scopes(scope, tokens)
    return loop.run_until_complete(_apps.run_asgi(app, scopes, body, len(scopes))) / len(tokens) / 1000


def _held(guard: Any) -> tuple[int, int, int, int]:
    """``(limit table keys, evictions, most clients any detector holds, cached tokens)``."""
    table = guard._counters
    tracked = max((len(d.states) for d in guard.detectors if hasattr(d, "states")), default=0)
    verifier = guard.verifier
    cache = getattr(verifier, "_cache", None)
    return len(table), table.evictions, tracked, len(cache) if cache is not None else 0


def run(clients: int, block: int, detectors: str, max_keys: int | None = None) -> str:
    """Run the scale test; the report (markdown). ``max_keys`` replaces the memory limit
    table's key cap."""
    provider = _apps.tracer_provider()
    chosen = _apps.detector_sets()["default detectors" if detectors == "default" else "trivial detector"]
    guard = _apps.make_guard(provider, chosen, max_keys=max_keys)
    app = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard)
    body = _apps.chat_body(1024, 1)
    scope = _apps.asgi_scope(_apps.token("warm-up"), body)
    loop = asyncio.new_event_loop()
    _block(loop, app, scope, [f"Bearer {_apps.token('warm-up')}".encode()] * 1000, body)
    rows: list[tuple[int, float, float, tuple[int, int, int, int]]] = []
    baseline = _rss_mib()
    done = 0
    while done < clients:
        size = min(block, clients - done)
        tokens = [f"Bearer {_apps.token(f'scale-{done + i}')}".encode() for i in range(size)]
        us = _block(loop, app, scope, tokens, body)
        del tokens
        provider.force_flush()
        gc.collect()
        done += size
        rows.append((done, us, _rss_mib(), _held(guard)))
        rss, held = rows[-1][2], rows[-1][3]
        print(f"{done:>9,} clients: {us:6.1f} us/request, RSS {rss:7.1f} MiB, held {held}", flush=True)
    loop.close()
    provider.shutdown()
    first, last = rows[0], rows[-1]
    grown_late = last[2] - rows[len(rows) // 2][2] if len(rows) > 2 else float("nan")
    lines = [
        f"Command: `python -m benchmarks.scale --clients {clients} --block {block} --detectors {detectors}"
        + (f" --max-keys {max_keys}`" if max_keys is not None else "`"),
        "",
        f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Versions: {versions()}.",
        "",
        f"{clients:,} distinct clients (each its own signed `sub`), one 1 KB chat request each, through the"
        f" guarded raw ASGI app ({detectors} detectors, `memory://` limits with a key cap of"
        f" {guard.plan.config.memory_max_keys:,}, the SDK span). RSS before the first block:"
        f" {baseline:,.0f} MiB.",
        "",
        "| clients so far | us/request (this block) | RSS, MiB | limit keys held | evicted so far |"
        " detector clients | cached tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for done, us, rss, held in rows:
        cells = [f"{done:,}", f"{us:.1f}", f"{rss:,.0f}"] + [f"{n:,}" for n in held]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Last block against the first: **{last[1] / first[1]:.2f}x** the CPU per request; RSS grew"
        f" {last[2] - first[2]:,.0f} MiB from the first block to the last"
        f" ({grown_late:,.0f} MiB over the second half).",
    ]
    return "\n".join(lines)


def write_section(path: Path, report: str) -> None:
    """Replace the scale section of ``path`` (between its markers) with ``report``."""
    text = path.read_text()
    head, rest = text.split(_START, 1)
    _, tail = rest.split(_END, 1)
    path.write_text(f"{head}{_START}\n{report}\n{_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1_000_000)
    parser.add_argument("--block", type=int, default=100_000)
    parser.add_argument("--detectors", choices=["trivial", "default"], default="trivial")
    parser.add_argument(
        "--max-keys", type=int, help="the memory limit table's key cap (default: the library's)"
    )
    parser.add_argument("--write", type=Path, help="replace the scale section of this markdown file")
    args = parser.parse_args(argv)
    report = run(args.clients, args.block, args.detectors, args.max_keys)
    print(report)
    if args.write is not None:
        write_section(args.write, report)


if __name__ == "__main__":
    main()

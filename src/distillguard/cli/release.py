"""``distillguard release CLIENT``: lift the risk policy's hold on a client, on every replica.

For a client blocked by mistake (a false positive found on review). It builds the guard from the
``DISTILLGUARD_*`` variables, as the gateway and the examples do, and calls
:meth:`~distillguard.Guard.release` on the shared limit storage: the client's penalty box, level
and shared detector history are cleared, and each replica forgets what it holds on the client at
the client's next request there. Its limit windows are not touched. It needs a shared storage
(``DISTILLGUARD_STORAGE_URI`` naming a Redis): with ``memory://`` each process holds its own
state, and only ``Guard.release`` inside that process reaches it. Exit status 0 when released,
1 when the storage did not take it, 2 for a configuration error (a memory storage included).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import StateError
from ._shared import add_client_arguments, shared_guard

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``release`` sub-command."""
    parser = subparsers.add_parser(
        "release",
        help="release a client the risk policy holds, on every replica",
        description=(
            "Clear a client's penalty box, level and shared detector history in the limit "
            "storage named by DISTILLGUARD_STORAGE_URI (a Redis); each replica forgets what it "
            "holds on the client at its next request there."
        ),
    )
    add_client_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``release``; return the exit status."""
    found = shared_guard()
    if found is None:
        return 2
    guard, uri = found
    try:
        guard.release(args.client, tenant=args.tenant)
    except StateError as exc:
        print(f"not released: {exc}", file=sys.stderr)
        return 1
    who = args.client if args.tenant is None else f"{args.client} (tenant {args.tenant})"
    print(f"released {who} on {uri}: each replica forgets it at its next request there")
    return 0

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
import logging
import sys
from typing import Any

from ..errors import ConfigurationError, StateError

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
    parser.add_argument("client", help="the client's identity (the configured identity claim)")
    parser.add_argument("--tenant", help="its tenant, when the limits are kept per tenant")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``release``; return the exit status."""
    from ..settings import guard_from_env
    from .check import redacted_uri

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        guard = guard_from_env()
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    uri = redacted_uri(guard.plan.config.storage_uri)
    if not guard.sync_performer().limiter.remote:
        print(
            f"configuration error: the limit storage is {uri}: each process holds its own state; "
            "call Guard.release inside the process, or set DISTILLGUARD_STORAGE_URI to the "
            "replicas' Redis",
            file=sys.stderr,
        )
        return 2
    try:
        guard.release(args.client, tenant=args.tenant)
    except StateError as exc:
        print(f"not released: {exc}", file=sys.stderr)
        return 1
    who = args.client if args.tenant is None else f"{args.client} (tenant {args.tenant})"
    print(f"released {who} on {uri}: each replica forgets it at its next request there")
    return 0

"""``distillguard status CLIENT``: where the risk policy stands on a client, across replicas.

It builds the guard from the ``DISTILLGUARD_*`` variables and reads what the shared limit storage
holds on the client (:meth:`~distillguard.Guard.status`; nothing is charged): whether it is in
the penalty box and for how long, its level (flag, throttle, degrade) and its releases. The
per-process risk and the detector that drove it live in each replica (read them with
``Guard.status`` there). ``--json`` prints one document. Exit status 0 when the storage answered,
1 when it did not, 2 for a configuration error (a memory storage included).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._shared import add_client_arguments, shared_guard

__all__ = ["register", "run"]

LEVELS = ("none", "flag", "throttle", "degrade")


def register(subparsers: Any) -> None:
    """Add the ``status`` sub-command."""
    parser = subparsers.add_parser(
        "status",
        help="show whether a client is boxed, its level and its releases, across replicas",
        description=(
            "Read what the limit storage named by DISTILLGUARD_STORAGE_URI (a Redis) holds on a "
            "client: its penalty box, its level and its releases. Nothing is charged."
        ),
    )
    add_client_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``status``; return the exit status."""
    found = shared_guard()
    if found is None:
        return 2
    guard, uri = found
    status = guard.status(args.client, tenant=args.tenant)
    doc = {
        "client": status.client_id,
        "storage": uri,
        "answered": status.shared,
        "boxed_for_seconds": None if status.boxed_for is None else round(status.boxed_for),
        "level": LEVELS[status.level],
        "releases": status.releases,
    }
    if args.json:
        print(json.dumps(doc))
    else:
        for key, value in doc.items():
            print(f"{key}: {value}")
    if not status.shared:
        print(f"the limit storage {uri} did not answer", file=sys.stderr)
        return 1
    return 0

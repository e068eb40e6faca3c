"""``distillguard status CLIENT``: where a client stands, across replicas.

It builds the guard from the ``DISTILLGUARD_*`` variables and reads what the shared limit storage
holds on the client (:meth:`~distillguard.Guard.status` and :meth:`~distillguard.Guard.usage`;
nothing is charged): whether it is in the penalty box and for how long, its level (flag,
throttle, degrade) and its releases, and how much of each of its limit windows it has used
(those of ``--tier``, with the rules of ``--path`` and ``--model``). The per-process risk and the
detector that drove it live in each replica (read them with ``Guard.status`` there). ``--json``
prints one document. Exit status 0 when the storage answered, 1 when it did not, 2 for a
configuration error (a memory storage included).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import StateError
from ..limiting import WindowUsage
from ..limiting.rules import COST_SCALE
from ._shared import add_client_arguments, shared_guard

__all__ = ["register", "run"]

LEVELS = ("none", "flag", "throttle", "degrade")


def register(subparsers: Any) -> None:
    """Add the ``status`` sub-command."""
    parser = subparsers.add_parser(
        "status",
        help="show whether a client is boxed, its level, releases and limit usage, across replicas",
        description=(
            "Read what the limit storage named by DISTILLGUARD_STORAGE_URI (a Redis) holds on a "
            "client: its penalty box, its level, its releases and how much of each limit window "
            "it has used. Nothing is charged."
        ),
    )
    add_client_arguments(parser)
    parser.add_argument("--tier", default="default", help="the client's tier: which windows it has")
    parser.add_argument("--path", help="the rules of this route only (default: of every route)")
    parser.add_argument("--model", help="also the rules that count this model apart")
    parser.add_argument("--limits", help="the client's own windows, when its token or API key sets them")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``status``; return the exit status."""
    found = shared_guard()
    if found is None:
        return 2
    guard, uri = found
    status = guard.status(args.client, tenant=args.tenant)
    try:
        windows = guard.usage(
            args.client,
            tier=args.tier,
            tenant=args.tenant,
            path=args.path,
            model=args.model,
            limits=args.limits,
        )
    except StateError:
        windows = None
    now = guard.clock()
    doc = {
        "client": status.client_id,
        "storage": uri,
        "answered": status.shared and windows is not None,
        "boxed_for_seconds": None if status.boxed_for is None else round(status.boxed_for),
        "level": LEVELS[status.level],
        "releases": status.releases,
        "windows": None if windows is None else [_window(w, now) for w in windows],
    }
    if args.json:
        print(json.dumps(doc))
    else:
        for key, value in doc.items():
            if key != "windows":
                print(f"{key}: {value}")
        for window in doc["windows"] or ():
            print(_line(window))
    if not doc["answered"]:
        print(f"the limit storage {uri} did not answer", file=sys.stderr)
        return 1
    return 0


def _window(usage: WindowUsage, now: float) -> dict[str, Any]:
    """One window's usage as the command shows it (a cost window's amounts in its currency
    unit, not in micros)."""

    def amount(micros_or_count: int) -> float:
        return micros_or_count / COST_SCALE if usage.unit == "cost" else micros_or_count

    return {
        "policy": usage.policy,
        "unit": usage.unit,
        "limit": amount(usage.limit),
        "used": amount(usage.used),
        "remaining": amount(usage.remaining),
        # an unused window has nothing to free up
        "resets_in_seconds": max(0, round(usage.reset_at - now)) if usage.used else None,
        "window_seconds": usage.seconds,
    }


def _line(window: dict[str, Any]) -> str:
    """One window as a line of text."""
    used = f"{window['used']:g} of {window['limit']:g}"
    unit = str(window["unit"]).replace("_", " ")
    amount = f"{used} spent" if unit == "cost" else f"{used} {unit} used"
    reset = window["resets_in_seconds"]
    line = f"window {window['policy']}: {amount}, {window['remaining']:g} left"
    return line if reset is None else f"{line}, frees up in {reset} s"

"""What the commands that act on the replicas' shared state (``release``, ``status``) share: the
guard built from the ``DISTILLGUARD_*`` variables, on a shared storage."""

from __future__ import annotations

import logging
import sys
from typing import Any

from ..errors import ConfigurationError

__all__ = ["add_client_arguments", "shared_guard"]


def shared_guard() -> tuple[Any, str] | None:
    """The guard the ``DISTILLGUARD_*`` variables describe and its storage URI (redacted), or
    ``None`` after printing why there is none to act on: a configuration error, or a storage in
    process (``memory://``: each process holds its own state)."""
    from ..settings import guard_from_env
    from .check import redacted_uri

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        guard = guard_from_env()
    except ConfigurationError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None
    uri = redacted_uri(guard.plan.config.storage_uri)
    if not guard.sync_performer().limiter.remote:
        print(
            f"configuration error: the limit storage is {uri}: each process holds its own state; "
            "use the Guard inside the process, or set DISTILLGUARD_STORAGE_URI to the replicas' "
            "Redis",
            file=sys.stderr,
        )
        return None
    return guard, uri


def add_client_arguments(parser: Any) -> None:
    """The client the command acts on, and its tenant."""
    parser.add_argument("client", help="the client's identity (the configured identity claim)")
    parser.add_argument("--tenant", help="its tenant, when the limits are kept per tenant")

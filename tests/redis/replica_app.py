"""A small guarded ASGI app for the multi-replica test: ``uvicorn tests.redis.replica_app:app``.

Settings come from the environment: ``DG_REDIS_URL`` (the shared storage), ``DG_LIMIT`` (the
client's windows) and ``DG_STRATEGY``. Each response names the replica (``X-Replica``: its pid).
"""

from __future__ import annotations

import os
from typing import Any

from distillguard import DistillGuardMiddleware, Guard, LimitConfig
from tests.helpers import jwt_config


async def model(scope: Any, receive: Any, send: Any) -> None:
    """Answer every request with a small JSON completion."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    body = b'{"choices":[{"message":{"content":"ok"}}]}'
    headers = [(b"content-type", b"application/json"), (b"x-replica", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


guard = Guard(
    jwt=jwt_config(),
    limits=LimitConfig(
        default=os.environ.get("DG_LIMIT", "10/minute"),
        strategy=os.environ.get("DG_STRATEGY", "moving-window"),
        storage_uri=os.environ.get("DG_REDIS_URL", "redis://127.0.0.1:6379/0"),
    ),
)
app = DistillGuardMiddleware(model, guard=guard)

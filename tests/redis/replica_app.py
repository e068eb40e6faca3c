"""A small guarded ASGI app for the multi-replica test: ``uvicorn tests.redis.replica_app:app``.

Settings come from the environment: ``DG_REDIS_URL`` (the shared storage), ``DG_LIMIT`` (the
client's windows) and ``DG_STRATEGY``. Each response names the replica (``X-Replica``: its pid).
A risk policy runs one detector, :class:`Tripwire`, which scores 1 (a block) for a prompt
containing ``TRIPWIRE`` and 0 for anything else. With ``DG_DETECTORS=default`` the replica runs
the default detector set instead, with the plain thresholds, its state shared through Redis
unless ``DG_SHARED=0``; with ``DG_DETECTORS=campaign``, the campaign detector alone (trusted to
block: ``max_score=1``), its accounts' windows and family records shared the same way.
"""

from __future__ import annotations

import os
from typing import Any

from distillguard import DetectorResult, DistillGuardMiddleware, Guard, LimitConfig, Observation, Policy
from distillguard.detectors.campaign import CampaignDetector
from distillguard.detectors.defaults import default_detectors
from distillguard.risk import RiskPolicy
from tests.helpers import jwt_config


class Tripwire:
    """Blocks a prompt that contains ``TRIPWIRE``."""

    name = "tripwire"

    def score(self, observation: Observation) -> DetectorResult:
        query = observation.query
        hit = query is not None and "TRIPWIRE" in query.text
        return DetectorResult(self.name, 1.0 if hit else 0.0, ("tripwire",) if hit else ())


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


DETECTORS = os.environ.get("DG_DETECTORS")
guard = Guard(
    jwt=jwt_config(),
    limits=LimitConfig(
        default=os.environ.get("DG_LIMIT", "10/minute"),
        strategy=os.environ.get("DG_STRATEGY", "moving-window"),
        storage_uri=os.environ.get("DG_REDIS_URL", "redis://127.0.0.1:6379/0"),
    ),
    detectors=(
        default_detectors()
        if DETECTORS == "default"
        else [CampaignDetector(max_score=1.0)]
        if DETECTORS == "campaign"
        else [Tripwire()]
    ),
    policy=(
        Policy(shared_state=os.environ.get("DG_SHARED", "1") == "1")
        if DETECTORS in ("default", "campaign")
        else Policy(risk=RiskPolicy(penalty_seconds=60))
    ),
)
app = DistillGuardMiddleware(model, guard=guard)

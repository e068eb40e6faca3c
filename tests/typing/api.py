"""Type-checked usage of the public API (run by mypy --strict, not by pytest)."""

from __future__ import annotations

from distillguard import (
    DetectorResult,
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    JWTConfig,
    LimitConfig,
    Observation,
    Policy,
)
from distillguard._types import Receive, Scope, Send


class LengthDetector:
    name = "length"

    def score(self, observation: Observation) -> DetectorResult:
        return DetectorResult(self.name, min(1.0, len(observation.query.text) / 10_000))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


guard = Guard(
    jwt=JWTConfig(
        algorithms=["HS256"], key="typing-test-secret-0123456789abcdef", issuer="https://idp", audience="api"
    ),
    limits=LimitConfig(default="60/minute"),
    detectors=[LengthDetector()],
    policy=Policy(flag=0.5, block=0.9),
)
asgi = DistillGuardMiddleware(app, guard=guard)
wsgi = DistillGuardWSGIMiddleware(lambda environ, start_response: [b""], guard=guard)


def support(client: str) -> float | None:
    """An operator's view of a client, then its release."""
    from distillguard.risk import ClientStatus

    status: ClientStatus = guard.status(client)
    if status.level >= 3:
        shared: bool = guard.release(client)
        return None if shared else status.risk
    return status.boxed_for


def headroom(client: str) -> dict[str, int]:
    """What is left of each of a pro client's windows, the rules of one model included."""
    from distillguard.limiting import WindowUsage

    windows: tuple[WindowUsage, ...] = guard.usage(client, tier="pro", model="gpt-4o", path=None)
    return {w.policy: w.remaining for w in windows if w.unit != "cost"}


async def aheadroom(client: str) -> float:
    windows = await guard.ausage(client, tenant="https://idp")
    return min((w.reset_at for w in windows if w.used), default=0.0)


async def asupport(client: str) -> bool:
    status = await guard.astatus(client, tenant="https://idp")
    return status.shared and await guard.arelease(client, tenant="https://idp")


def recorded(path: str) -> Guard:
    """A guard recording its traffic for ``distillguard calibrate`` (one file per process)."""
    from distillguard.request_log import RequestLog

    log = RequestLog(f"{path}/requests-{{pid}}.jsonl", sample=0.5, served_only=True, max_bytes=1 << 30)
    return Guard(jwt=None, on_decision=log)


def contract_key() -> Guard:
    """An API key carrying a customer's own windows."""
    from distillguard import APIKey, APIKeys

    keys = APIKeys(
        keys={APIKeys.digest("sk-acme"): APIKey(client_id="acme", tier="pro", limits="600/minute")}
    )
    jwt = JWTConfig(
        algorithms=["HS256"],
        key="typing-test-secret-0123456789abcdef",
        issuer="https://idp",
        audience="api",
        limits_claim="rate_limit",
    )
    return Guard(jwt=jwt, api_keys=keys, error_format="openai")

"""The outcome of guarding one request."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .detectors import DetectorResult
from .identity import Identity
from .limiting import LimitOutcome
from .limiting.budget import Budget
from .problems import Problem
from .query import Query

__all__ = ["Action", "Decision"]


class Action(str, enum.Enum):
    """What the guard decided. The first five come from the policy; the rest are refusals
    that happen before detectors run."""

    ALLOW = "allow"
    FLAG = "flag"
    DEGRADE = "degrade"
    THROTTLE = "throttle"
    BLOCK = "block"
    RATE_LIMITED = "rate_limited"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    UNAVAILABLE = "unavailable"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The guard's decision on one request; the app can read it from the ASGI scope
    (``scope["state"]["distillguard"]``) or the WSGI environ (``environ["distillguard.decision"]``).

    Attributes:
        action: the verdict (in shadow mode, the verdict that *would* have been enforced).
        identity: the verified client, when authentication succeeded.
        problem: the refusal to send, or ``None`` when the request goes to the app.
        query: the parsed request, when it got that far.
        limits: the outcome of each limit window charged.
        results: each detector's result.
        score: the aggregate detector score.
        reasons: why the verdict is what it is (machine-readable, no request contents).
        shadow: ``True`` when shadow mode let through a request the policy would have refused
            or altered.
        headers: extra headers for the app's response (e.g. RateLimit fields).
        body: the request body the app receives, when policy rewrote it (degrade).
        auth_failure: why authentication failed (for telemetry and logs; never sent).
        errors: names of detectors or storages that failed during this request.
        budget: what an admitted request still owes its limits after the response (token
            reconciliation, the concurrency slot); the exchange settles and releases it.
    """

    action: Action
    identity: Identity | None = None
    problem: Problem | None = None
    query: Query | None = None
    limits: tuple[LimitOutcome, ...] = ()
    results: tuple[DetectorResult, ...] = ()
    score: float = 0.0
    reasons: tuple[str, ...] = ()
    shadow: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    auth_failure: str | None = None
    errors: tuple[str, ...] = ()
    budget: Budget | None = field(default=None, repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        """Whether the request goes on to the app."""
        return self.problem is None

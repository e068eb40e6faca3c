"""Tallying and printing what the demo's guard decided, per client."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CAUGHT", "ClientStats", "Outcome", "render_summary", "summarise"]

CAUGHT = frozenset({"flag", "degrade", "throttle", "block"})
"""Detector verdicts that count as catching a client."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What happened to one request.

    Attributes:
        status: the HTTP status the client saw (0 when the connection failed).
        code: the problem ``code`` of a refusal.
        action: the guard's decision, from its span.
        score: the aggregate detector score.
        reasons: the detector reasons.
        logprobs_served: whether the response carried log probabilities.
    """

    status: int
    code: str | None
    action: str
    score: float
    reasons: tuple[str, ...] = ()
    logprobs_served: bool = False

    @property
    def refused(self) -> bool:
        """Whether the client was refused (any non-2xx answer)."""
        return not 200 <= self.status < 300


@dataclass(slots=True, kw_only=True)
class ClientStats:
    """Running totals for one client."""

    client: str
    role: str
    requests: int = 0
    allowed: int = 0
    flagged: int = 0
    degraded: int = 0
    blocked: int = 0
    first_caught: int | None = None
    max_score: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def record(self, outcome: Outcome) -> int:
        """Count ``outcome``; return the request's number for this client (from 1)."""
        self.requests += 1
        if outcome.refused:
            self.blocked += 1
        elif outcome.action == "flag":
            self.flagged += 1
        elif outcome.action in ("degrade", "throttle"):
            self.degraded += 1
        else:
            self.allowed += 1
        if outcome.action in CAUGHT and self.first_caught is None:
            self.first_caught = self.requests
        self.max_score = max(self.max_score, outcome.score)
        self.reasons.update(outcome.reasons)
        return self.requests

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "client": self.client,
            "role": self.role,
            "requests": self.requests,
            "allowed": self.allowed,
            "flagged": self.flagged,
            "degraded": self.degraded,
            "blocked": self.blocked,
            "first_caught": self.first_caught,
            "max_score": round(self.max_score, 4),
            "top_reasons": [r for r, _ in self.reasons.most_common(3)],
        }


def summarise(stats: Sequence[ClientStats], detectors: Sequence[str], elapsed: float) -> dict[str, Any]:
    """The demo's result: per-client totals and the verdict."""
    attacker_caught = all(s.first_caught is not None for s in stats if s.role == "extractor")
    benign_blocked = [s.client for s in stats if s.role == "benign" and s.blocked]
    return {
        "detectors": list(detectors),
        "clients": [s.as_dict() for s in stats],
        "attacker_caught": attacker_caught,
        "benign_blocked": benign_blocked,
        "passed": attacker_caught and not benign_blocked,
        "elapsed_seconds": round(elapsed, 2),
    }


def render_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of ``summary`` and its verdict."""
    head = ("client", "role", "requests", "allowed", "flagged", "degraded", "blocked", "caught at")
    rows = [
        (
            c["client"],
            c["role"],
            str(c["requests"]),
            str(c["allowed"]),
            str(c["flagged"]),
            str(c["degraded"]),
            str(c["blocked"]),
            "-" if c["first_caught"] is None else f"request #{c['first_caught']}",
        )
        for c in summary["clients"]
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in (head, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for c in summary["clients"]:
        if c["top_reasons"]:
            lines.append(f"{c['client']}: {', '.join(c['top_reasons'])}")
    caught = "caught" if summary["attacker_caught"] else "NOT caught"
    blocked = ", ".join(summary["benign_blocked"]) or "none"
    lines.append(
        f"\nextractor {caught}; benign users refused: {blocked}; "
        f"{'PASS' if summary['passed'] else 'FAIL'} in {summary['elapsed_seconds']:.1f} s"
    )
    return "\n".join(lines)

"""The policy: how detector scores become a verdict, and what each verdict does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from .decision import Action
from .detectors import DetectorResult
from .errors import ConfigurationError
from .request import HTTP_TOKEN
from .risk import RiskPolicy

__all__ = ["DETECTION_MODES", "DetectionMode", "Policy", "decide", "detection_mode"]

DetectionMode = Literal["enforce", "shadow", "off"]
"""What the detectors do for a tier: decide (``"enforce"``), only record (``"shadow"``), or not
run at all (``"off"``)."""
DETECTION_MODES: tuple[DetectionMode, ...] = get_args(DetectionMode)
"""Every :data:`DetectionMode`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Thresholds on the aggregate detector score (the highest detector score).

    Args:
        flag: at or above this score the request is flagged (recorded, served unchanged).
        degrade: at or above this score the request is served degraded: ``degrade_fields``
            are removed from the request body before the app sees it (``None`` disables).
        block: at or above this score the request is refused (``None`` disables).
        block_status: 429 (``abnormal-usage-detected``, the default) or 403.
        block_retry_after: the ``Retry-After`` of a block, in seconds.
        degrade_fields: request fields removed when degrading (log probabilities by default,
            which Carlini et al. 2024 use to recover model weights).
        degrade_max_tokens: also cap ``max_tokens`` when degrading.
        degrade_header: a response header telling the client its answer was degraded (e.g.
            ``"X-Distillguard-Degraded"``), valued with what was taken out (``logprobs``, the
            request fields removed, ``max_tokens`` when capped). ``None`` (the default): the
            client is not told, as a suspected extractor is not told it is suspected.
        on_error: a detector that raises is recorded and ``"ignore"``-d (scores 0), or counts
            as a ``"block"`` (scores 1).
        detector_timeout: seconds an async or ``blocking = True`` detector may take under
            ASGI before it counts as a detector that raised (``on_error`` applies); ``None`` for
            no limit. Inline detectors cannot be interrupted: keep them cheap, or mark slow ones
            ``blocking = True``.
        shadow: compute and record everything, never refuse or alter a request (limits
            included; authentication is still enforced).
        risk: a per-client risk policy (decaying risk, throttle, penalty box; see
            :mod:`distillguard.risk`). When set, it decides instead of ``flag``/``degrade``/
            ``block`` above; ``block_status``, ``degrade_fields`` and ``shadow`` still apply.
        shared_state: with a shared limit storage (Redis or Valkey), keep each client's
            detector state there too, so that every replica's detectors see the client's whole
            stream (read before the detectors run, written after; see ``docs/detectors.md``).
            ``False`` keeps it per process. Memory storage never shares.
        state_ttl: seconds a client's shared detector state lives after its last request.
        tier_detection: the detection mode of some tiers (the identity's tier, e.g. from the
            token's ``tier`` claim): ``"shadow"`` scores and records the tier's requests but
            never lets the detectors refuse, throttle or alter them (nor the penalty box hold
            them), ``"off"`` does not run the detectors for the tier at all; both still
            authenticate the client and enforce its limits. For a known integration whose
            traffic is a template by design (a backend filling one prompt for its own
            customers), which the detectors would otherwise rightly flag. Other tiers
            ``"enforce"``.
        stream_recheck: with a risk policy, the seconds between two checks, while a streamed
            answer is being sent, that its client has not gone into the penalty box since the
            answer started (blocked on another request, or boxed by another replica); a boxed
            client's stream is ended there: a server-sent event stream gets a last ``error``
            event (which OpenAI's SDKs raise as an ``APIError``), any other answer ends where it
            is, and the app is told that the client left. ``None``: never re-check. Not in
            shadow mode, nor for tiers whose detection is not enforced.
    """

    flag: float = 0.5
    degrade: float | None = 0.75
    block: float | None = 0.9
    block_status: int = 429
    block_retry_after: int = 300
    degrade_fields: Sequence[str] = ("logprobs", "top_logprobs", "logit_bias")
    degrade_max_tokens: int | None = None
    degrade_header: str | None = None
    on_error: Literal["ignore", "block"] = "ignore"
    detector_timeout: float | None = 1.0
    shadow: bool = False
    risk: RiskPolicy | None = None
    shared_state: bool = True
    state_ttl: float = 21_600.0
    tier_detection: Mapping[str, DetectionMode] = field(default_factory=dict, hash=False)
    stream_recheck: float | None = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.tier_detection, Mapping) or not all(
            isinstance(tier, str) and mode in DETECTION_MODES for tier, mode in self.tier_detection.items()
        ):
            raise ConfigurationError(
                "Policy.tier_detection must map tier names to 'enforce', 'shadow' or 'off'"
            )
        # a read-only copy: the caller's dict may change after the guard is built
        object.__setattr__(self, "tier_detection", MappingProxyType(dict(self.tier_detection)))
        if isinstance(self.degrade_fields, str):  # "logprobs" would remove "l", "o", ...
            raise ConfigurationError("Policy.degrade_fields must be a list of field names")
        levels = [t for t in (self.flag, self.degrade, self.block) if t is not None]
        if any(not 0.0 < t <= 1.0 for t in levels):
            raise ConfigurationError("policy thresholds must be in (0, 1]")
        if levels != sorted(levels):
            raise ConfigurationError("policy thresholds must satisfy flag <= degrade <= block")
        if self.degrade_header is not None and HTTP_TOKEN.fullmatch(self.degrade_header) is None:
            raise ConfigurationError("Policy.degrade_header must be a header name (an HTTP token)")
        if self.block_status not in (403, 429):
            raise ConfigurationError("Policy.block_status must be 403 or 429")
        if self.on_error not in ("ignore", "block"):
            raise ConfigurationError("Policy.on_error must be 'ignore' or 'block'")
        if self.detector_timeout is not None and not 0.0 < self.detector_timeout <= 3600.0:
            raise ConfigurationError("Policy.detector_timeout must be in (0, 3600] seconds, or None")
        if not 1.0 <= self.state_ttl <= 30 * 86_400.0:
            raise ConfigurationError("Policy.state_ttl must be in [1, 2592000] seconds")
        if self.stream_recheck is not None and not 0.01 <= self.stream_recheck <= 3600.0:
            raise ConfigurationError("Policy.stream_recheck must be in [0.01, 3600] seconds, or None")
        if self.block_retry_after < 1:
            raise ConfigurationError("Policy.block_retry_after must be at least 1 second")


def detection_mode(policy: Policy, tier: str) -> DetectionMode:
    """The detection mode of ``tier`` under ``policy``."""
    modes = policy.tier_detection
    return modes.get(tier, "enforce") if modes else "enforce"


def decide(results: Sequence[DetectorResult], policy: Policy) -> tuple[Action, float, tuple[str, ...]]:
    """Map detector results to ``(action, aggregate score, reasons)``."""
    if not results:
        return Action.ALLOW, 0.0, ()
    top = max(results, key=lambda r: r.score)
    score = top.score
    reasons = tuple(
        f"{r.detector}:{reason}" for r in results if r.score >= policy.flag for reason in r.reasons
    )
    if policy.block is not None and score >= policy.block:
        return Action.BLOCK, score, reasons
    if policy.degrade is not None and score >= policy.degrade:
        return Action.DEGRADE, score, reasons
    if score >= policy.flag:
        return Action.FLAG, score, reasons
    return Action.ALLOW, score, ()

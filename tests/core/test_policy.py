"""The policy: thresholds on detector scores, and its validation."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard import Action, ConfigurationError, DetectorResult, Policy
from distillguard.policy import decide

pytestmark = pytest.mark.timeout(30)


def results(*scores: float) -> list[DetectorResult]:
    return [DetectorResult(f"d{i}", s, (f"r{i}",)) for i, s in enumerate(scores)]


@pytest.mark.parametrize(
    ("scores", "action"),
    [
        pytest.param((), Action.ALLOW, id="no-detectors"),
        pytest.param((0.0, 0.49), Action.ALLOW, id="below-flag"),
        pytest.param((0.5,), Action.FLAG, id="at-flag"),
        pytest.param((0.1, 0.74), Action.FLAG, id="below-degrade"),
        pytest.param((0.75,), Action.DEGRADE, id="at-degrade"),
        pytest.param((0.89, 0.2), Action.DEGRADE, id="below-block"),
        pytest.param((0.9,), Action.BLOCK, id="at-block"),
        pytest.param((0.0, 1.0), Action.BLOCK, id="highest-wins"),
    ],
)
def test_default_thresholds(scores: tuple[float, ...], action: Action) -> None:
    """The highest score picks the action: flag 0.5, degrade 0.75, block 0.9 (inclusive)."""
    got, score, _ = decide(results(*scores), Policy())
    assert got is action
    assert score == (max(scores) if scores else 0.0)


def test_reasons_come_from_detectors_at_or_over_flag() -> None:
    """Reasons name each detector at or over the flag threshold; allowed requests carry none."""
    _, _, reasons = decide(results(0.2, 0.6, 0.95), Policy())
    assert reasons == ("d1:r1", "d2:r2")
    assert decide(results(0.1), Policy())[2] == ()


def test_disabled_levels() -> None:
    """With degrade and block disabled, the most a score can do is flag."""
    policy = Policy(degrade=None, block=None)
    assert decide(results(1.0), policy)[0] is Action.FLAG


def test_scores_are_clamped() -> None:
    """Detector scores outside [0, 1] are clamped, so a buggy detector cannot exceed block."""
    assert DetectorResult("x", 7.0).score == 1.0
    assert DetectorResult("x", -3).score == 0.0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"flag": 0}, id="zero-flag"),
        pytest.param({"flag": 1.5}, id="flag-over-one"),
        pytest.param({"flag": 0.8, "degrade": 0.7}, id="flag-over-degrade"),
        pytest.param({"degrade": 0.95, "block": 0.9}, id="degrade-over-block"),
        pytest.param({"block_status": 500}, id="bad-block-status"),
        pytest.param({"on_error": "explode"}, id="bad-on-error"),
        pytest.param({"block_retry_after": 0}, id="zero-retry-after"),
        pytest.param({"degrade_fields": "logprobs"}, id="degrade-fields-as-a-string"),
    ],
)
def test_invalid_policy(options: dict[str, Any]) -> None:
    """Inconsistent thresholds and unknown settings raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Policy(**options)


def test_policy_is_frozen() -> None:
    """A policy is an immutable value."""
    policy = Policy()
    with pytest.raises(AttributeError):
        policy.flag = 0.1  # type: ignore[misc]

"""Limit configuration is validated at construction; the circuit breaker backs off exponentially."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard import ConfigurationError, LimitConfig
from distillguard.limiting import LimiterStats, LimitRule
from distillguard.limiting.outage import CircuitBreaker


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rules": [LimitRule(name="a", limits="1/minute"), LimitRule(name="a", limits="2/minute")]},
        {"rules": [LimitRule(name="a", limits="")]},
        {"rules": [LimitRule(name="a", limits="1/minute", strategy="leaky")]},
        {"tenant": "lots"},
        {"auth_failures": "3 per fortnight"},
        {"concurrency": 0},
        {"concurrency_tiers": {"free": -1}},
        {"outage": "retry_forever"},
        {"outage_retry_after": 0},
        {"breaker_base_delay": 5.0, "breaker_max_delay": 1.0},
        {"memory_max_keys": 1},
        {"chars_per_token": 0},
        {"storage_uri": "async+redis://localhost"},
    ],
)
def test_invalid_limit_settings_fail_at_construction(kwargs: dict[str, Any]) -> None:
    """Each invalid setting raises ConfigurationError when the config is built."""
    with pytest.raises(ConfigurationError):
        LimitConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "has space", "limits": "1/minute"},
        {"name": "t", "limits": "1/minute", "unit": "bytes"},
        {"name": "t", "limits": "1/minute", "unit": "tokens", "strategy": "moving-window"},
        {"name": "t", "limits": "1/minute", "models": "gpt-4o"},
        {"name": "t", "limits": "1/minute", "per": "world"},
    ],
)
def test_invalid_rules_fail_at_construction(kwargs: dict[str, Any]) -> None:
    """Bad rule names, units, token strategies, scalar model lists and scopes are refused."""
    with pytest.raises(ConfigurationError):
        LimitRule(**kwargs)


def test_existing_configs_still_work() -> None:
    """The original fields keep their meaning and defaults (backwards compatible)."""
    config = LimitConfig(default="10/minute", tiers={"pro": "100/minute"}, strategy="fixed-window")
    assert config.outage == "local_fallback" and config.concurrency is None and config.rules == ()
    assert config.auth_failures == "" and config.memory_max_keys == 100_000


def test_breaker_backs_off_exponentially_and_closes_on_success() -> None:
    """Opens after the threshold; probes after 1, 2, 4, then the 5 s cap; one probe at a time;
    a successful probe closes it and counts a recovery."""
    now = [0.0]
    stats = LimiterStats()
    breaker = CircuitBreaker(threshold=3, base_delay=1.0, max_delay=5.0, stats=stats, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.is_open and stats.breaker_opened == 1
    waits = []
    for _ in range(4):
        start = now[0]
        while not breaker.allow():
            now[0] += 0.25
        waits.append(now[0] - start)
        assert not breaker.allow()  # the probe is in flight: others skip
        breaker.failure()
    assert waits == [1.0, 2.0, 4.0, 5.0]
    now[0] += 5.0
    assert breaker.allow()
    breaker.success()
    assert not breaker.is_open and stats.recoveries == 1 and stats.probes == 5
    assert breaker.allow() and breaker.allow()

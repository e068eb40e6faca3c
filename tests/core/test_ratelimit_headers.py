"""The IETF RateLimit fields (draft-10), ``Retry-After``, and limit configuration.

Fields are parsed with ``http-sf`` (an RFC 9651 Structured Fields parser), not with string
comparisons, so the tests check the syntax a client library would see.
"""

from __future__ import annotations

from typing import Any

import http_sf
import pytest
from hypothesis import given, settings, strategies as st
from limits import parse

from distillguard import ConfigurationError, LimitConfig
from distillguard.limiting import LimitCheck, LimitOutcome
from distillguard.limiting.config import parse_limits
from distillguard.limiting.headers import go_duration, ratelimit_fields, retry_after, retry_after_ms
from distillguard.limiting.plan import policy_name

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000.0


def outcome(
    limit: str, *, remaining: int, reset_in: float, allowed: bool = True, **check: Any
) -> LimitOutcome:
    item = parse(limit)
    return LimitOutcome(
        check=LimitCheck(policy=policy_name(item), item=item, key=("c", "default", "x"), **check),
        allowed=allowed,
        remaining=remaining,
        reset_at=NOW + reset_in,
    )


def fields(*outcomes: LimitOutcome) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The rendered fields, parsed as Structured-Field Lists."""
    return {
        name: http_sf.parse(value.encode(), tltype="list") for name, value in ratelimit_fields(outcomes, NOW)
    }


def test_two_windows() -> None:
    """Each disclosed window appears, in order, with quota/window and remaining/reset."""
    got = fields(
        outcome("60/minute", remaining=59, reset_in=60), outcome("1000/day", remaining=990, reset_in=3600.2)
    )
    assert got["ratelimit-policy"] == [
        ("60-per-1-minute", {"q": 60, "w": 60}),
        ("1000-per-1-day", {"q": 1000, "w": 86400}),
    ]
    assert got["ratelimit"] == [
        ("60-per-1-minute", {"r": 59, "t": 60}),
        ("1000-per-1-day", {"r": 990, "t": 3601}),
    ]


def test_policy_names_are_sf_strings() -> None:
    """Policy names are Structured-Field Strings (quoted), as draft-10 requires."""
    (name, value) = ratelimit_fields([outcome("5/second", remaining=1, reset_in=1)], NOW)[0]
    assert name == "ratelimit-policy" and value.startswith('"5-per-1-second";')


def test_hidden_and_failed_windows_are_not_disclosed() -> None:
    """Windows with ``headers=False`` or a storage error are left out; none left, no fields."""
    hidden = outcome("10/minute", remaining=3, reset_in=10, headers=False)
    failed = LimitOutcome(
        check=outcome("20/minute", remaining=0, reset_in=0).check,
        allowed=True,
        remaining=0,
        reset_at=NOW,
        error="StorageError",
    )
    assert ratelimit_fields([hidden, failed], NOW) == []
    shown = outcome("30/minute", remaining=29, reset_in=60)
    assert [n for n, _ in fields(hidden, shown)["ratelimit"]] == ["30-per-1-minute"]


@settings(max_examples=200, deadline=None)
@given(
    remaining=st.integers(min_value=-10, max_value=10_000),
    reset_in=st.floats(min_value=-7200, max_value=200_000, allow_nan=False),
    limit=st.sampled_from(["1/second", "60/minute", "1000/hour", "5000/day", "3 per 2 minutes"]),
)
def test_fields_always_valid(remaining: int, reset_in: float, limit: str) -> None:
    """Whatever the storage reports (negative remaining, a reset in the past or beyond the
    window), the fields parse and stay in range: r >= 0 and 0 <= t <= w."""
    parsed = fields(outcome(limit, remaining=remaining, reset_in=reset_in))
    ((_, policy),) = parsed["ratelimit-policy"]
    ((_, state),) = parsed["ratelimit"]
    assert state["r"] >= 0 and 0 <= state["t"] <= policy["w"]
    assert isinstance(state["r"], int) and isinstance(state["t"], int)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-3600, max_value=90_000, allow_nan=False), min_size=1, max_size=4))
def test_retry_after_is_a_positive_integer(resets: list[float]) -> None:
    """``Retry-After`` covers the latest refusing window and is an integer of at least 1,
    never negative even for a reset in the past."""
    refused = [outcome("1/minute", remaining=0, reset_in=r, allowed=False) for r in resets]
    allowed = outcome("1/day", remaining=5, reset_in=80_000)
    value = retry_after([*refused, allowed], NOW)
    assert isinstance(value, int) and value >= 1
    assert value >= max(resets)
    assert value < max(resets) + 1 or value == 1


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"default": "lots/minute"}, id="bad-limit-string"),
        pytest.param({"default": "10/fortnight"}, id="unknown-granularity"),
        pytest.param({"tiers": {"pro": "x"}}, id="bad-tier-limit"),
        pytest.param({"tiers": {"": "1/minute"}}, id="empty-tier-name"),
        pytest.param({"strategy": "leaky-bucket"}, id="unknown-strategy"),
        pytest.param({"storage_uri": "localhost:6379"}, id="storage-not-a-uri"),
    ],
)
def test_invalid_limit_config(options: dict[str, Any]) -> None:
    """Invalid limit settings raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        LimitConfig(**options)


def test_parse_limits() -> None:
    """``parse_limits`` reads ``;``-separated windows; an empty string means no limit."""
    assert [policy_name(i) for i in parse_limits("60/minute;1000/day")] == [
        "60-per-1-minute",
        "1000-per-1-day",
    ]
    assert parse_limits("  ") == ()


def test_token_windows_say_their_unit() -> None:
    """A token window is not read as a request quota: it carries the vendor parameter
    ``distillguard-unit="tokens"`` (the draft registers no token unit); request windows stay
    bare (``requests`` is the draft's default unit)."""
    got = fields(
        outcome("60/minute", remaining=59, reset_in=60),
        outcome("100000/minute", remaining=99000, reset_in=60, unit="tokens", cost=1000),
    )
    assert got["ratelimit-policy"] == [
        ("60-per-1-minute", {"q": 60, "w": 60}),
        ("100000-per-1-minute", {"q": 100000, "w": 60, "distillguard-unit": "tokens"}),
    ]
    assert got["ratelimit"][1] == ("100000-per-1-minute", {"r": 99000, "t": 60})


def openai_fields(*outcomes: LimitOutcome) -> dict[str, str]:
    return dict(ratelimit_fields(outcomes, NOW, "openai"))


def test_openai_style_reports_the_tightest_window_per_unit() -> None:
    """One value per unit: the request window with the least quota left, and separately the
    token window with the least left (input and output sides included)."""
    got = openai_fields(
        outcome("60/minute", remaining=59, reset_in=1),
        outcome("1000/day", remaining=12, reset_in=7200),
        outcome("100000/minute", remaining=98000, reset_in=30, unit="tokens"),
        outcome("50000/minute", remaining=40000, reset_in=45, unit="output_tokens"),
    )
    assert got == {
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-reset-requests": "2h0m0s",
        "x-ratelimit-limit-tokens": "50000",
        "x-ratelimit-remaining-tokens": "40000",
        "x-ratelimit-reset-tokens": "45s",
    }


def test_openai_style_ties_go_to_the_longer_wait_and_never_go_negative() -> None:
    """Two exhausted windows: the one that frees up later is the one to wait for; a negative
    remaining (a cost over the quota) shows as 0."""
    got = openai_fields(
        outcome("10/minute", remaining=-3, reset_in=20, allowed=False),
        outcome("100/hour", remaining=0, reset_in=1800, allowed=False),
    )
    assert got["x-ratelimit-remaining-requests"] == "0"
    assert got["x-ratelimit-limit-requests"] == "100"
    assert got["x-ratelimit-reset-requests"] == "30m0s"


def test_openai_style_discloses_no_hidden_or_failed_window() -> None:
    hidden = outcome("10/minute", remaining=0, reset_in=10, headers=False)
    assert openai_fields(hidden) == {}
    assert ratelimit_fields([hidden], NOW, "both") == []


def test_both_styles_together() -> None:
    """``"both"``: the IETF pair first, then the OpenAI fields."""
    names = [n for n, _ in ratelimit_fields([outcome("5/second", remaining=4, reset_in=1)], NOW, "both")]
    assert names == [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (1, "1s"), (59, "59s"), (60, "1m0s"), (61, "1m1s"), (3600, "1h0m0s"), (86400, "24h0m0s")],
)
def test_go_durations(seconds: int, text: str) -> None:
    """Resets are written as Go durations, as OpenAI writes them."""
    assert go_duration(seconds) == text


def test_header_style_is_checked_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="header_style"):
        LimitConfig(header_style="x-ratelimit")


def test_retry_after_ms_is_the_exact_wait() -> None:
    """``retry-after-ms``: the longest wait of the refusing windows in milliseconds, rounded up,
    at least 1; the allowed windows do not count."""
    refusing = [
        outcome("10/minute", remaining=0, reset_in=0.2501, allowed=False),
        outcome("100/hour", remaining=0, reset_in=1.5, allowed=False),
        outcome("1000/day", remaining=5, reset_in=80_000),
    ]
    assert retry_after_ms(refusing, NOW) == 1500
    assert retry_after(refusing, NOW) == 2
    assert retry_after_ms([outcome("1/second", remaining=0, reset_in=-1, allowed=False)], NOW) == 1

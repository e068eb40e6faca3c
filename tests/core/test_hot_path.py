"""The per-request shortcuts give exactly what the plain computations give."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, strategies as st
from limits import parse_many

from distillguard.limiting import LimitCheck, LimitOutcome
from distillguard.limiting.headers import ratelimit_fields
from distillguard.query import _loads, parse_query

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(_json_values, st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
def test_loads_matches_json_loads_in_every_encoding(value: object, encoding: str) -> None:
    """The UTF-8 shortcut decodes every encoding json.loads accepts to the same value."""
    body = json.dumps(value).encode(encoding)
    assert _loads(body) == json.loads(body)


@given(st.binary(max_size=64))
def test_loads_fails_where_json_loads_fails(body: bytes) -> None:
    """Arbitrary bytes either decode to json.loads' value or raise a ValueError like it."""
    try:
        expected = json.loads(body)
    except ValueError:
        with pytest.raises(ValueError):
            _loads(body)
    else:
        assert _loads(body) == expected


def test_surrogate_escapes_survive_the_shortcut() -> None:
    """Lone surrogates pass through as json.loads lets them (surrogatepass)."""
    body = '{"messages":[{"role":"user","content":"\ud800x"}]}'.encode("utf-8", "surrogatepass")
    assert parse_query(body).text == "\ud800x"


def test_utf16_chat_body_is_still_a_chat() -> None:
    """A UTF-16 chat body (no shortcut) is parsed like before."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode("utf-16")
    query = parse_query(body)
    assert (query.kind, query.text, query.model) == ("chat", "hi", "m")


def _reference_fields(outcomes: list[LimitOutcome], now: float) -> list[tuple[str, str]]:
    """The RateLimit fields rendered the plain way (draft-10)."""
    policies, states = [], []
    for o in outcomes:
        if not o.check.headers or o.error is not None:
            continue
        window = o.check.item.get_expiry()
        policies.append(f'"{o.check.policy}";q={o.check.item.amount};w={window}')
        reset = min(window, max(0, math.ceil(o.reset_at - now)))
        states.append(f'"{o.check.policy}";r={max(0, o.remaining)};t={reset}')
    if not policies:
        return []
    return [("ratelimit-policy", ", ".join(policies)), ("ratelimit", ", ".join(states))]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["60/minute", "1000/day", "5/second", "10/hour"]),
            st.integers(-5, 2000),
            st.floats(-100.0, 200_000.0),
            st.booleans(),
            st.none() | st.just("ConnectionError"),
        ),
        max_size=4,
    )
)
def test_ratelimit_fields_match_the_plain_rendering(
    windows: list[tuple[str, int, float, bool, str | None]],
) -> None:
    """The cached policy field and the state field equal the plain rendering for any outcomes."""
    now = 1_700_000_000.0
    outcomes = []
    for text, remaining, offset, headers, error in windows:
        item = parse_many(text)[0]
        check = LimitCheck(policy=f"p-{text}", item=item, key=("c", "t", "x"), headers=headers)
        outcomes.append(
            LimitOutcome(check=check, allowed=True, remaining=remaining, reset_at=now + offset, error=error)
        )
    assert ratelimit_fields(outcomes, now) == _reference_fields(outcomes, now)
    assert ratelimit_fields(outcomes, now) == _reference_fields(outcomes, now)  # from the cache


def test_policy_field_follows_the_policy_not_a_stale_cache() -> None:
    """Two plans with the same window names but other quotas get their own policy field."""
    now = 1_700_000_000.0
    fields = []
    for text in ("60/minute", "61/minute"):
        check = LimitCheck(policy="per-minute", item=parse_many(text)[0], key=("c", "t", "x"))
        outcome = LimitOutcome(check=check, allowed=True, remaining=3, reset_at=now + 10)
        fields.append(dict(ratelimit_fields([outcome], now))["ratelimit-policy"])
    assert fields == ['"per-minute";q=60;w=60', '"per-minute";q=61;w=60']

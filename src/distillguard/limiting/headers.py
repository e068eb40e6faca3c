"""The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and ``Retry-After``.

Both fields are RFC 9651 Structured-Field Lists whose items are policy names (Strings)::

    RateLimit-Policy: "60-per-1-minute";q=60;w=60, "1000-per-1-day";q=1000;w=86400
    RateLimit: "60-per-1-minute";r=59;t=60, "1000-per-1-day";r=999;t=86400

The draft registers quota units for requests, content bytes and concurrent requests, not for
model tokens: a token window (``LimitRule(unit="tokens")``) carries the vendor parameter
``distillguard-unit="tokens"`` (``"input_tokens"``, ``"output_tokens"`` for one side) so that a
client does not read its quota as requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .plan import LimitOutcome, policy_name

__all__ = ["ratelimit_fields", "retry_after", "violated_policies"]


def _seconds_until(reset_at: float, now: float) -> int:
    return max(0, math.ceil(reset_at - now))


_POLICY_FIELDS: dict[tuple[tuple[str, int, int, str], ...], str] = {}
"""``RateLimit-Policy`` values already rendered, by (name, quota, window, unit) of each policy."""


def _policy_item(name: str, quota: int, window: int, unit: str) -> str:
    item = f'"{name}";q={quota};w={window}'
    return item if unit == "requests" else f'{item};distillguard-unit="{unit}"'


def _policy_field(policies: tuple[tuple[str, int, int, str], ...]) -> str:
    field = _POLICY_FIELDS.get(policies)
    if field is None:
        field = ", ".join(_policy_item(*policy) for policy in policies)
        if len(_POLICY_FIELDS) >= 4096:
            _POLICY_FIELDS.clear()
        _POLICY_FIELDS[policies] = field
    return field


def ratelimit_fields(outcomes: Iterable[LimitOutcome], now: float) -> list[tuple[str, str]]:
    """Render ``RateLimit-Policy`` and ``RateLimit`` for the disclosed windows (may be empty)."""
    policies: list[tuple[str, int, int, str]] = []
    states: list[str] = []
    for outcome in outcomes:
        check = outcome.check
        if not check.headers or outcome.error is not None:
            continue
        item = check.item
        window = item.get_expiry()
        policies.append((check.policy, item.amount, window, check.unit))
        remaining = outcome.remaining
        left = math.ceil(outcome.reset_at - now)
        # r = max(0, remaining); t = min(window, max(0, left)), without the builtin calls
        reset = window if left >= window else (left if left > 0 else 0)
        states.append(f'"{check.policy}";r={remaining if remaining > 0 else 0};t={reset}')
    if not states:
        return []
    return [("ratelimit-policy", _policy_field(tuple(policies))), ("ratelimit", ", ".join(states))]


_HIDDEN_NAMES = (("tenant-", "tenant"), ("auth-", "authentication-failures"), ("throttle-", "usage-pattern"))


def violated_policies(refused: Iterable[LimitOutcome]) -> list[str]:
    """The names a refusal gives its windows (``violated-policies``): a disclosed window by its
    policy name; a window that is never disclosed (a tenant's aggregate, failed
    authentications, a risk throttle) by what it is, never by its quota, which would tell a
    suspected extractor the pace to keep."""
    names: list[str] = []
    for outcome in refused:
        check = outcome.check
        name = check.policy
        if not check.headers:  # its kind, or the name of its rule: never the quota
            quota = "-" + policy_name(check.item)
            bare = name[: -len(quota)] if name.endswith(quota) else "undisclosed"
            name = next((label for prefix, label in _HIDDEN_NAMES if name.startswith(prefix)), bare)
        if name not in names:
            names.append(name)
    return names


def retry_after(outcomes: Iterable[LimitOutcome], now: float) -> int:
    """Seconds until every refusing window has room again (at least 1)."""
    waits = [_seconds_until(o.reset_at, now) for o in outcomes if not o.allowed]
    return max([1, *waits])

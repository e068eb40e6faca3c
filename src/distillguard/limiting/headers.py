"""The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers-10) and ``Retry-After``.

Both fields are RFC 9651 Structured-Field Lists whose items are policy names (Strings)::

    RateLimit-Policy: "60-per-1-minute";q=60;w=60, "1000-per-1-day";q=1000;w=86400
    RateLimit: "60-per-1-minute";r=59;t=60, "1000-per-1-day";r=999;t=86400

The draft registers quota units for requests, content bytes and concurrent requests, not for
model tokens: a token window (``LimitRule(unit="tokens")``) carries the vendor parameter
``distillguard-unit="tokens"`` (``"input_tokens"``, ``"output_tokens"`` for one side) so that a
client does not read its quota as requests; a cost window (``unit="cost"``) carries
``distillguard-unit="cost-micros"``: its quota and remaining count are in micros (millionths) of
the prices' currency unit.

``LimitConfig(header_style="openai")`` sends the fields OpenAI's API sends instead (``"both"``
sends the two sets), which OpenAI-compatible clients and gateways pace themselves on; a 429
also carries ``retry-after-ms``, the wait in milliseconds, which OpenAI's SDKs prefer to
``Retry-After``::

    x-ratelimit-limit-requests: 60
    x-ratelimit-remaining-requests: 59
    x-ratelimit-reset-requests: 1s
    x-ratelimit-limit-tokens: 100000
    x-ratelimit-remaining-tokens: 98000
    x-ratelimit-reset-tokens: 6m0s

One value per unit: of the disclosed request windows (and of the token windows, input and
output sides included) the one with the least quota left, the later reset breaking a tie. The
reset is the time until that window has room again (the IETF ``t``), as a Go duration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .plan import LimitOutcome

__all__ = ["go_duration", "ratelimit_fields", "retry_after", "retry_after_ms", "violated_policies"]


def _seconds_until(reset_at: float, now: float) -> int:
    return max(0, math.ceil(reset_at - now))


_POLICY_FIELDS: dict[tuple[tuple[str, int, int, str], ...], str] = {}
"""``RateLimit-Policy`` values already rendered, by (name, quota, window, unit) of each policy."""


_UNIT_LABELS = {"cost": "cost-micros"}
"""The ``distillguard-unit`` of a unit, when it is not the unit's own name."""


def _policy_item(name: str, quota: int, window: int, unit: str) -> str:
    item = f'"{name}";q={quota};w={window}'
    return item if unit == "requests" else f'{item};distillguard-unit="{_UNIT_LABELS.get(unit, unit)}"'


def _policy_field(policies: tuple[tuple[str, int, int, str], ...]) -> str:
    field = _POLICY_FIELDS.get(policies)
    if field is None:
        field = ", ".join(_policy_item(*policy) for policy in policies)
        if len(_POLICY_FIELDS) >= 4096:
            _POLICY_FIELDS.clear()
        _POLICY_FIELDS[policies] = field
    return field


def ratelimit_fields(
    outcomes: Iterable[LimitOutcome], now: float, style: str = "ietf"
) -> list[tuple[str, str]]:
    """Render the rate-limit fields of the disclosed windows (may be empty): ``RateLimit-Policy``
    and ``RateLimit`` for the ``"ietf"`` ``style``, the ``x-ratelimit-*`` fields for
    ``"openai"``, both sets for ``"both"``."""
    policies: list[tuple[str, int, int, str]] = []
    states: list[str] = []
    tightest: dict[bool, tuple[int, int, int]] = {}  # by "is a token unit": remaining, reset, quota
    for outcome in outcomes:
        check = outcome.check
        if not check.headers or outcome.error is not None:
            continue
        item = check.item
        window = item.get_expiry()
        remaining = outcome.remaining
        remaining = remaining if remaining > 0 else 0
        left = math.ceil(outcome.reset_at - now)
        # t = min(window, max(0, left)), without the builtin calls
        reset = window if left >= window else (left if left > 0 else 0)
        if style != "openai":
            policies.append((check.policy, item.amount, window, check.unit))
            states.append(f'"{check.policy}";r={remaining};t={reset}')
        if style != "ietf" and check.unit != "cost":  # OpenAI's fields have no spend
            tokens = check.unit != "requests"
            best = tightest.get(tokens)
            if best is None or (remaining, -reset) < (best[0], -best[1]):
                tightest[tokens] = (remaining, reset, item.amount)
    fields: list[tuple[str, str]] = []
    if states:
        fields += [("ratelimit-policy", _policy_field(tuple(policies))), ("ratelimit", ", ".join(states))]
    for tokens, (remaining, reset, quota) in sorted(tightest.items()):
        unit = "tokens" if tokens else "requests"
        fields += [
            (f"x-ratelimit-limit-{unit}", str(quota)),
            (f"x-ratelimit-remaining-{unit}", str(remaining)),
            (f"x-ratelimit-reset-{unit}", go_duration(reset)),
        ]
    return fields


def go_duration(seconds: int) -> str:
    """``seconds`` written as a Go duration, as OpenAI writes its resets: ``"0s"``, ``"59s"``,
    ``"6m0s"``, ``"1h0m5s"``."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


_QUOTA = re.compile(r"-[0-9]+-per-[0-9]+-[a-z]+$")
"""The window part of a policy name (:func:`~distillguard.limiting.plan.policy_name`)."""
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
            bare, found = _QUOTA.subn("", name)  # the rule's name without its window's
            bare = bare if found else "undisclosed"
            name = next((label for prefix, label in _HIDDEN_NAMES if name.startswith(prefix)), bare)
        if name not in names:
            names.append(name)
    return names


def retry_after(outcomes: Iterable[LimitOutcome], now: float) -> int:
    """Seconds until every refusing window has room again (at least 1)."""
    waits = [_seconds_until(o.reset_at, now) for o in outcomes if not o.allowed]
    return max([1, *waits])


def retry_after_ms(outcomes: Iterable[LimitOutcome], now: float) -> int:
    """Milliseconds until every refusing window has room again (at least 1): the
    ``retry-after-ms`` field OpenAI's SDKs read before ``Retry-After``."""
    waits = [math.ceil((o.reset_at - now) * 1000) for o in outcomes if not o.allowed]
    return max([1, *waits])

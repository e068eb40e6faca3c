"""Limit rules: extra windows by tier, route and model, counted in requests, tokens or cost."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from limits import RateLimitItem

from ..errors import ConfigurationError

__all__ = ["COST_SCALE", "METERED_UNITS", "TOKEN_UNITS", "LimitRule", "Price", "Unit", "rules_from_json"]

Unit = Literal["requests", "tokens", "input_tokens", "output_tokens", "cost"]
"""What a window counts."""
TOKEN_UNITS = ("tokens", "input_tokens", "output_tokens")
"""The units counted in model tokens (estimated, then reconciled with the response's usage)."""
METERED_UNITS = (*TOKEN_UNITS, "cost")
"""The units charged an estimate before the call and reconciled with the usage after it."""
COST_SCALE = 1_000_000
"""A cost window counts *micros*: millionths of the currency unit its limits are written in."""

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_PRICE = 1e9
"""The highest price per million tokens: any real one is far below, and the cost of any token
count a response can report stays a finite number."""


@dataclass(frozen=True, slots=True)
class Price:
    """What a model's tokens cost, per million tokens, in the currency unit of the cost rule's
    limits (``Price(2.5, 10)``: 2.5 per million input tokens, 10 per million output tokens).

    Args:
        input: the price of a million prompt tokens.
        output: the price of a million completion tokens (reasoning tokens included, as the
            response's ``completion_tokens`` counts them).
    """

    input: float
    output: float

    def __post_init__(self) -> None:
        for side in (self.input, self.output):
            if isinstance(side, bool) or not isinstance(side, int | float) or not 0 <= side <= _MAX_PRICE:
                raise ConfigurationError(
                    f"Price sides must be numbers from 0 to {_MAX_PRICE:g}, not {side!r}"
                )

    def micros(self, prompt: int, completion: int) -> int:
        """What ``prompt`` input and ``completion`` output tokens cost, in micros of the unit
        (a token at 1 per million costs one micro), rounded up."""
        # rounded to a millionth of a micro first: 100 tokens at 0.3 cost 30, not 31
        return math.ceil(round(prompt * self.input + completion * self.output, 6))


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitRule:
    """Extra windows that apply to the requests matching ``tiers``, ``routes`` and ``models``.

    Args:
        name: a short name (letters, digits, ``._-``); it prefixes the policy names shown in the
            RateLimit fields and the counters' keys.
        limits: the windows in ``limits`` notation, e.g. ``"100000/minute;2000000/day"``.
        unit: ``"requests"`` (each request costs 1) or ``"tokens"`` (each request is charged its
            estimated prompt tokens plus ``max_tokens`` x ``n``, then reconciled with the
            response's ``usage``); ``"input_tokens"`` or ``"output_tokens"`` count one side
            only (the prompt's, or the completion's: what a distiller harvests), estimated and
            reconciled the same way. A request that cannot use any token of its rule's side
            (an embedding under an output rule) is neither charged nor refused by it.
            ``"cost"`` counts what the tokens cost at the model's :class:`Price`: ``limits``
            are in the prices' currency unit (``"50/day"`` with prices in dollars per million
            tokens: 50 dollars a day, across models), counted in micros (millionths).
        tiers: the tiers the rule applies to (all when empty).
        routes: paths the rule applies to: exact, or a prefix when ending in ``/`` (all when empty).
        models: the request's ``model`` values the rule applies to (all when empty). With
            models listed, each model is counted separately.
        per: ``"client"`` (one counter per client), ``"tenant"`` (one counter shared by every
            client of a tenant: an aggregate limit) or ``"all"`` (one counter for every client:
            the capacity of a route or a model, e.g. a campaign's accounts together). A shared
            counter is never disclosed in the RateLimit fields (its remaining count would tell
            a client how much the others use), whatever ``headers`` says.
        strategy: the ``limits`` strategy; token windows use ``"fixed-window"`` (the only one
            whose refunds are exact). Request windows default to ``LimitConfig.strategy``.
        headers: disclose these windows in the RateLimit fields.
        prices: a cost rule's :class:`Price` by model (the request's ``model``), with ``"*"``
            for any model not listed; required for ``unit="cost"``, where every model the rule
            applies to needs a price (``"*"``, or each of ``models``).
    """

    name: str
    limits: str
    unit: Unit = "requests"
    tiers: Sequence[str] = ()
    routes: Sequence[str] = ()
    models: Sequence[str] = ()
    per: Literal["client", "tenant", "all"] = "client"
    strategy: str | None = None
    headers: bool = True
    prices: Mapping[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigurationError(f"LimitRule.name {self.name!r} must match {_NAME.pattern}")
        if self.unit not in ("requests", *METERED_UNITS):
            raise ConfigurationError(
                "LimitRule.unit must be 'requests', 'tokens', 'input_tokens', 'output_tokens' or 'cost'"
            )
        if self.per not in ("client", "tenant", "all"):
            raise ConfigurationError("LimitRule.per must be 'client', 'tenant' or 'all'")
        for group in (self.tiers, self.routes, self.models):
            if isinstance(group, str):
                raise ConfigurationError(f"LimitRule {self.name!r}: tiers/routes/models must be lists")
        if self.unit in METERED_UNITS and self.strategy not in (None, "fixed-window"):
            raise ConfigurationError(
                f"LimitRule {self.name!r}: token and cost windows use the fixed window (refunds "
                "are exact only there; a moving window stores one entry per token)"
            )
        self._check_prices()

    def _check_prices(self) -> None:
        if self.unit != "cost":
            if self.prices:
                raise ConfigurationError(f"LimitRule {self.name!r}: prices apply to unit='cost' only")
            return
        if not isinstance(self.prices, Mapping) or not all(
            isinstance(model, str) and isinstance(price, Price) for model, price in self.prices.items()
        ):
            raise ConfigurationError(f"LimitRule {self.name!r}: prices must map model names to Price values")
        if "*" not in self.prices and (not self.models or any(m not in self.prices for m in self.models)):
            raise ConfigurationError(
                f"LimitRule {self.name!r}: a cost rule needs a price for every model it applies to: "
                "a '*' price for any model, or one for each of its models"
            )
        # a copy: the caller's dict changing later must not change a built rule
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def price_for(self, model: str | None) -> Price:
        """The price of ``model``'s tokens under a cost rule (``"*"`` when not listed)."""
        price = self.prices.get(model) if model is not None else None
        return price if price is not None else self.prices["*"]

    def matches(self, tier: str, path: str, model: str | None) -> bool:
        """Whether a request of ``tier`` to ``path`` for ``model`` falls under this rule."""
        if self.tiers and tier not in self.tiers:
            return False
        if self.models and model not in self.models:
            return False
        if self.routes:
            return any(path == r or (r.endswith("/") and path.startswith(r)) for r in self.routes)
        return True


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its windows parsed."""

    rule: LimitRule
    windows: tuple[tuple[str, RateLimitItem], ...]
    strategy: str


_LISTS = ("tiers", "routes", "models")
_STRINGS = ("name", "limits", "unit", "per", "strategy")
_FIELDS = (*_STRINGS, *_LISTS, "headers", "prices")


def rules_from_json(text: str, source: str = "rules") -> tuple[LimitRule, ...]:
    """Limit rules from a JSON array of objects with the fields of :class:`LimitRule`
    (``name`` and ``limits`` required); a cost rule's ``prices`` map models to
    ``{"input": 2.5, "output": 10}``. For deployments configured by environment (the gateway)::

        [{"name": "out", "limits": "200000/day", "unit": "output_tokens", "tiers": ["free"]},
         {"name": "spend", "limits": "50/day", "unit": "cost",
          "prices": {"*": {"input": 2.5, "output": 10}}}]

    Raises:
        ConfigurationError: naming ``source``, the rule's index and the field, for anything
            else (unknown fields included: a misspelt field would silently not apply).
    """
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, list):
        raise ConfigurationError(f"{source} must be a JSON array of rule objects")
    return tuple(_rule(item, f"{source}[{i}]") for i, item in enumerate(doc))


def _rule(item: object, where: str) -> LimitRule:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where} must be a JSON object")
    unknown = sorted(set(item) - set(_FIELDS))
    if unknown:
        raise ConfigurationError(f"{where}: unknown fields {unknown}; a rule has {list(_FIELDS)}")
    for name in ("name", "limits"):
        if name not in item:
            raise ConfigurationError(f"{where}: {name!r} is required")
    kwargs: dict[str, Any] = {}
    for name, value in item.items():
        if name in _STRINGS:
            ok = isinstance(value, str) or (name == "strategy" and value is None)
        elif name in _LISTS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif name == "headers":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, dict)
            if ok:
                value = {model: _price(price, f"{where}.prices[{model!r}]") for model, price in value.items()}
        if not ok:
            raise ConfigurationError(f"{where}: {name!r} has the wrong type")
        kwargs[name] = value
    try:
        return LimitRule(**kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _price(value: object, where: str) -> Price:
    if not isinstance(value, dict) or set(value) != {"input", "output"}:
        raise ConfigurationError(f'{where} must be {{"input": <price>, "output": <price>}}')
    try:
        return Price(value["input"], value["output"])
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None

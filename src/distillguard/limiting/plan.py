"""The limit plan: which counters one request is charged against."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from limits import RateLimitItem

from ..errors import ConfigurationError
from ..identity import Identity
from ..query import Query
from ..request import address_key
from .concurrency import ConcurrencyLimiter
from .config import LimitConfig, parse_limits
from .rules import COST_SCALE, METERED_UNITS, CompiledRule, LimitRule, Price
from .storage import hash_tag, is_cluster, is_memory
from .tokens import TokenEstimate, estimate_tokens

__all__ = ["LimitCheck", "LimitOutcome", "LimitPlan", "WindowUsage", "policy_name"]

logger = logging.getLogger("distillguard")


def policy_name(item: RateLimitItem) -> str:
    """A stable, readable name for a window, e.g. ``"60-per-1-minute"``."""
    return f"{item.amount}-per-{item.multiples}-{item.GRANULARITY.name}"


def _scaled(item: RateLimitItem) -> RateLimitItem:
    """The window ``item`` counting micros of its amount's unit (a cost window)."""
    return type(item)(item.amount * COST_SCALE, item.multiples, item.namespace)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitCheck:
    """One counter to charge.

    Attributes:
        policy: the policy's name, as shown in ``RateLimit-Policy``.
        item: the ``limits`` window.
        key: the identifiers of the counter (e.g. ``("client", tier, client_id)``).
        cost: how much the request costs in the window's unit.
        headers: whether this window is disclosed in the RateLimit fields.
        strategy: the ``limits`` strategy counting this window.
        unit: ``"requests"``, a token unit (``"tokens"``, ``"input_tokens"``,
            ``"output_tokens"``) or ``"cost"`` (micros of a currency unit).
        price: what the request's model costs, for a ``"cost"`` window.
    """

    policy: str
    item: RateLimitItem
    key: tuple[str, ...]
    cost: int = 1
    headers: bool = True
    strategy: str = "moving-window"
    unit: str = "requests"
    price: Price | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitOutcome:
    """The result of charging one :class:`LimitCheck`.

    Attributes:
        check: the check.
        allowed: whether the request fit in the window.
        remaining: what is left in the window after this request.
        reset_at: when more quota frees up (unix seconds).
        error: a storage failure message, when the storage could not be reached.
        mode: where the decision was taken: ``"primary"`` (the configured storage),
            ``"fallback"`` (the local memory storage during an outage), ``"open"`` (admitted
            uncounted during an outage) or ``"closed"`` (refused during an outage).
        charged: whether the window was charged (``False`` when another window of an
            all-or-nothing charge refused, or when it was only tested).
    """

    check: LimitCheck
    allowed: bool
    remaining: int
    reset_at: float
    error: str | None = None
    mode: str = "primary"
    charged: bool = True

    @property
    def counted(self) -> bool:
        """Whether the request's cost was added to a window (and could be refunded)."""
        return self.allowed and self.charged and self.mode in ("primary", "fallback")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowUsage:
    """How much of one window a client has used (:meth:`~distillguard.Guard.usage`).

    Attributes:
        policy: the window's name, as in ``RateLimit-Policy`` (a rule's windows start with the
            rule's name, the tenant's with ``tenant-``).
        unit: what the window counts: ``"requests"``, a token unit (``"tokens"``,
            ``"input_tokens"``, ``"output_tokens"``) or ``"cost"``.
        limit: the window's quota in its unit (a cost window's in micros of its currency unit).
        used: how much of it is taken (``limit - remaining``).
        remaining: what is left of it.
        reset_at: when quota frees up next (unix seconds).
        seconds: the window's length.
    """

    policy: str
    unit: str
    limit: int
    used: int
    remaining: int
    reset_at: float
    seconds: int

    @classmethod
    def of(cls, outcome: LimitOutcome) -> WindowUsage:
        """The usage a read of a window (``outcome``) shows."""
        check = outcome.check
        limit = check.item.amount
        return cls(
            policy=check.policy,
            unit=check.unit,
            limit=limit,
            used=max(0, limit - outcome.remaining),
            remaining=outcome.remaining,
            reset_at=outcome.reset_at,
            seconds=check.item.get_expiry(),
        )


def _part(text: str) -> str:
    """One part of a counter key, escaped so that parts cannot run into each other (the parts
    are joined with ``/``: client ``a/b`` of tier ``c`` and client ``b`` of tier ``c/a`` must
    not share a counter)."""
    return text.replace("%", "%25").replace("/", "%2F") if "/" in text or "%" in text else text


class LimitPlan:
    """Compiles a :class:`LimitConfig` once and plans the checks of each request.

    Args:
        config: the limit settings.
        per_tenant: count each client per tenant (when several token issuers are accepted, the
            same ``sub`` from two of them is two clients).
    """

    def __init__(self, config: LimitConfig, *, per_tenant: bool = False) -> None:
        self.config = config
        self.per_tenant = per_tenant
        # on a Redis Cluster a client's own keys start with its hash tag (one slot: one script)
        self.cluster = is_cluster(config.storage_uri)
        self._default = self._compile(parse_limits(config.default))
        self._tiers = {tier: self._compile(parse_limits(text)) for tier, text in config.tiers.items()}
        self._cache: dict[tuple[str, str, str | None], tuple[LimitCheck, ...]] = {}
        self._owns: dict[str, tuple[tuple[str, RateLimitItem], ...] | None] = {}
        self._tenant = self._compile(parse_limits(config.tenant))
        self._auth = self._compile(parse_limits(config.auth_failures))
        self._rules = tuple(
            CompiledRule(
                rule,
                tuple(
                    # a cost window is named in the limits' unit and counts micros of it
                    (f"{rule.name}-{name}", _scaled(item) if rule.unit == "cost" else item)
                    for name, item in self._compile(parse_limits(rule.limits))
                ),
                rule.strategy or ("fixed-window" if rule.unit in METERED_UNITS else config.strategy),
            )
            for rule in config.rules
        )
        self.concurrency = ConcurrencyLimiter(max_keys=config.memory_max_keys)
        # in-flight requests counted on the shared storage (leases), else in this process
        self.shares_concurrency = config.concurrency_scope == "storage" and not is_memory(config.storage_uri)

    def _compile(self, items: tuple[RateLimitItem, ...]) -> tuple[tuple[str, RateLimitItem], ...]:
        return tuple((policy_name(item), item) for item in items)

    def checks_for(
        self, identity: Identity, path: str = "", query: Query | None = None
    ) -> tuple[LimitCheck, ...]:
        """The checks of one request: the client's tier windows, then the tenant's aggregate
        windows, then every matching rule (request rules, then token rules charged the
        request's :func:`~distillguard.limiting.tokens.estimate_tokens`). Request windows
        charge the request's :meth:`weight`."""
        owner = self.owner(identity)
        checks = self._client_checks(identity, owner)
        weight = self.weight(query)
        if weight > 1:
            checks = tuple(replace(c, cost=weight) for c in checks)
        if not self._rules and not (self._tenant and identity.tenant):
            return checks
        extra = list(self._tenant_checks(identity, weight))
        model = query.model if query is not None else None
        estimate: TokenEstimate | None = None
        token_checks: list[LimitCheck] = []
        for compiled in self._rules:
            rule = compiled.rule
            if not rule.matches(identity.tier, path, model):
                continue
            cost = weight
            price = None
            if rule.unit != "requests":
                if estimate is None:
                    estimate = self.estimate(query)
                if estimate is None:
                    continue
                if rule.unit == "tokens":
                    cost = estimate.total
                elif rule.unit == "cost":
                    price = rule.price_for(model)
                    cost = price.micros(estimate.prompt, estimate.completion)
                    if cost == 0:  # a free model
                        continue
                else:  # one side only; a request that cannot use that side is not counted
                    cost = estimate.prompt if rule.unit == "input_tokens" else estimate.completion
                    if cost == 0:
                        continue
            rule_key = self._rule_key(rule, identity, owner, model)
            if rule_key is None:
                continue
            made = (
                LimitCheck(
                    policy=name,
                    item=item,
                    key=rule_key,
                    cost=cost,
                    headers=rule.headers and self.config.headers and rule.per == "client",
                    strategy=compiled.strategy,
                    unit=rule.unit,
                    price=price,
                )
                for name, item in compiled.windows
            )
            (extra if rule.unit == "requests" else token_checks).extend(made)
        return (*checks, *extra, *token_checks)

    def windows_for(
        self, identity: Identity, path: str | None = None, model: str | None = None
    ) -> tuple[LimitCheck, ...]:
        """Every window a request of ``identity`` to ``path`` for ``model`` is counted in, as
        checks that cost nothing (to read the windows: :meth:`~distillguard.Guard.usage`): the
        tier's windows, the tenant's and every matching rule's, whatever its unit.
        ``path=None`` takes the rules of every route; a rule of named models counts each model
        apart, so it is read only for a ``model`` it names."""
        owner = self.owner(identity)
        found = [replace(c, cost=0) for c in self._client_checks(identity, owner)]
        found.extend(self._tenant_checks(identity, 0))
        for compiled in self._rules:
            rule = compiled.rule
            # no path: a route of the rule's own stands for it (any route would do)
            route = path if path is not None else (rule.routes[0] if rule.routes else "")
            rule_key = self._rule_key(rule, identity, owner, model)
            if rule_key is None or not rule.matches(identity.tier, route, model):
                continue
            found.extend(
                LimitCheck(
                    policy=name,
                    item=item,
                    key=rule_key,
                    cost=0,
                    headers=False,
                    strategy=compiled.strategy,
                    unit=rule.unit,
                )
                for name, item in compiled.windows
            )
        return tuple(found)

    def _client_checks(self, identity: Identity, owner: str) -> tuple[LimitCheck, ...]:
        """The windows of ``identity`` (its own ``limits``, else its tier's) on ``owner``'s
        counters (cached: bounded, since rotating identities must not grow it)."""
        tier, limits = identity.tier, identity.limits
        cache_key = (tier, owner, limits)
        checks = self._cache.get(cache_key)
        if checks is None:
            key: tuple[str, ...] = ("c", _part(tier), _part(owner))
            if self.cluster:
                key = (hash_tag(owner), *key)
            strategy, headers = self.config.strategy, self.config.headers
            windows = self._own(limits) if limits is not None else None
            checks = tuple(
                LimitCheck(policy=name, item=item, key=key, headers=headers, strategy=strategy)
                for name, item in (windows or self._tiers.get(tier, self._default))
            )
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[cache_key] = checks
        return checks

    def _own(self, limits: str) -> tuple[tuple[str, RateLimitItem], ...] | None:
        """A client's own windows, parsed once (``None`` for notation that does not parse, or
        names no window: the client keeps its tier's, and it is logged once)."""
        if limits in self._owns:
            return self._owns[limits]
        try:
            windows: tuple[tuple[str, RateLimitItem], ...] | None = (
                self._compile(parse_limits(limits)) or None
            )
        except ConfigurationError:
            windows = None
        if windows is None:
            logger.warning(
                "distillguard: a client's own limits are not valid notation; its tier's apply (%.40r)",
                limits,
            )
        if len(self._owns) >= 1024:  # bounded: the values come from tokens
            self._owns.clear()
        self._owns[limits] = windows
        return windows

    def _tenant_checks(self, identity: Identity, weight: int) -> tuple[LimitCheck, ...]:
        """The tenant's aggregate windows (none without a tenant)."""
        if not (self._tenant and identity.tenant):
            return ()
        key: tuple[str, ...] = ("t", _part(identity.tenant))
        strategy = self.config.strategy
        return tuple(
            LimitCheck(policy=f"tenant-{n}", item=i, key=key, cost=weight, headers=False, strategy=strategy)
            for n, i in self._tenant
        )

    def _rule_key(
        self, rule: LimitRule, identity: Identity, owner: str, model: str | None
    ) -> tuple[str, ...] | None:
        """The counter of ``rule`` a request is charged to (``None``: a per-tenant rule and no
        tenant, never one counter for every such client)."""
        if rule.per == "tenant":
            if not identity.tenant:
                return None
            holder = _part(identity.tenant)
        elif rule.per == "all":
            holder = "*"
        else:
            holder = _part(owner)
        key: tuple[str, ...] = ("r", _part(rule.name), holder)
        if rule.models:  # each model its own counter
            key = (*key, _part(model or ""))
        if self.cluster and rule.per == "client":
            key = (hash_tag(owner), *key)
        return key

    def owner(self, identity: Identity) -> str:
        """Whose counters a request is charged to: the client, within its tenant when
        :attr:`per_tenant`."""
        if self.per_tenant and identity.tenant:
            return f"{identity.tenant}\x1f{identity.client_id}"
        return identity.client_id

    def weight(self, query: Query | None) -> int:
        """What ``query`` costs in request windows: its outputs (``n`` times its prompts or
        inputs) with ``LimitConfig.count_outputs``, else 1."""
        if query is None or not self.config.count_outputs:
            return 1
        return query.n * query.inputs

    def estimate(self, query: Query | None) -> TokenEstimate | None:
        """The token estimate of ``query`` under this configuration."""
        if query is None:
            return None
        config = self.config
        return estimate_tokens(
            query, chars_per_token=config.chars_per_token, default_max_tokens=config.default_max_tokens
        )

    def auth_failure_checks(self, address: str | None) -> tuple[LimitCheck, ...]:
        """The failed-authentication windows of a client address (empty when off)."""
        if not self._auth:
            return ()
        key = ("a", address_key(address))
        return tuple(
            LimitCheck(policy=f"auth-{n}", item=i, key=key, headers=False, strategy="moving-window")
            for n, i in self._auth
        )

    def concurrency_cap(self, identity: Identity) -> int | None:
        """How many requests ``identity`` may have in flight (``None``: no cap)."""
        return self.config.concurrency_tiers.get(identity.tier, self.config.concurrency)

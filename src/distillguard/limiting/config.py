"""Limit settings (validated at construction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from limits import RateLimitItem, parse_many
from limits.strategies import STRATEGIES

from ..errors import ConfigurationError
from .outage import OutagePolicy
from .rules import LimitRule
from .storage import check_storage_uri

__all__ = ["LimitConfig", "parse_limits"]

HEADER_STYLES = ("ietf", "openai", "both")
"""The values of :attr:`LimitConfig.header_style`."""


def parse_limits(text: str) -> tuple[RateLimitItem, ...]:
    """Parse ``"60/minute;1000/day"`` into limit items; an empty string means no limit.

    Raises:
        ConfigurationError: when the string is not valid ``limits`` notation.
    """
    if not text.strip():
        return ()
    try:
        return tuple(parse_many(text))
    except ValueError as exc:
        raise ConfigurationError(f"invalid limit string {text!r}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitConfig:
    """Request limits per client, by tier.

    Args:
        default: the windows for tiers not listed in ``tiers`` (``limits`` notation, several
            separated by ``;``). An empty string means unlimited.
        tiers: windows by tier name, e.g. ``{"free": "20/minute;200/day", "pro": "600/minute"}``.
        strategy: ``"moving-window"`` (exact; default), ``"sliding-window-counter"`` or
            ``"fixed-window"`` (up to twice the limit across a window boundary).
        storage_uri: ``memory://`` (the default) counts per process; ``redis://``,
            ``rediss://``, ``redis+unix://``, ``redis+sentinel://``, ``redis+cluster://`` and
            the ``valkey`` equivalents share limits across workers and replicas. Other
            ``limits`` schemes are refused, as is a scheme whose driver is not installed.
        storage_options: extra options for the storage and its client (e.g.
            ``{"password": ..., "ssl_ca_certs": ...}``), the same for both adapters.
        headers: send the IETF ``RateLimit-Policy`` and ``RateLimit`` fields (draft-10) on
            responses. Limits are always enforced; this only controls disclosure.
        header_style: which fields ``headers`` sends: ``"ietf"`` (``RateLimit-Policy`` and
            ``RateLimit``), ``"openai"`` (OpenAI's ``x-ratelimit-limit-requests``,
            ``-remaining-requests``, ``-reset-requests`` and their ``-tokens`` twins, which
            OpenAI-compatible clients and gateways pace themselves on) or ``"both"``.
        key_prefix: the namespace of distillguard's counters in the storage.
        rules: extra windows by tier, route and model, in requests, tokens or cost
            (:class:`~distillguard.limiting.rules.LimitRule`).
        tenant: windows shared by all clients of a tenant (the issuer, or
            ``JWTConfig.tenant_claim``): an aggregate limit. Empty means none.
        auth_failures: windows per client address for failed authentication, checked *before*
            any signature is verified: an address over them gets 429 for every request that
            carries a token. Empty (the default) turns it off; ``"20/minute;100/hour"`` suits
            most APIs.
        concurrency: requests (streams included) a client may have in flight at once in this
            process; ``None`` for no cap.
        concurrency_tiers: the cap by tier (overrides ``concurrency``).
        concurrency_scope: where in-flight requests are counted: ``"storage"`` (the default)
            counts them on the configured storage, so that with a Redis storage the cap holds
            across every worker and replica; ``"process"`` counts them in each process (with
            ``w`` processes a client may hold ``w x cap``). With ``memory://`` both are the
            process.
        concurrency_lease: seconds a request's slot on a shared storage lasts unless renewed;
            an answer still streaming renews it. A replica that dies holding slots frees them
            when their leases run out.
        count_outputs: request windows charge a request one unit per output it asks for:
            ``n`` choices times its prompts (a completions batch) or inputs (an embeddings
            batch, a batch of predict rows). A request with ``n=8`` or a batch of 8 counts 8,
            so that batching buys no extra samples; one that alone is over a window is refused
            at once. ``False`` charges every request 1 (OpenAI-style requests per minute).
        refund_server_errors: give a request its request windows back when the app answers it
            with a server error (5xx): a client is not held to requests the service failed,
            as token windows already are not. An app that raises keeps the charge, as it keeps
            the token estimate. Off by default: a client whose requests make the model server
            fail is then not slowed by its limits (the concurrency cap still holds it).
        max_outputs: with ``count_outputs``, a request asking for more outputs than this is
            refused with 400 ``too_many_outputs`` before any window is charged (a moving window
            keeps one entry per unit: one request must not write a million of them).
        chars_per_token: prompt characters per estimated token.
        default_max_tokens: the completion budget assumed when a request gives no
            ``max_tokens``.
        outage: what to do when the shared storage is down (see
            :mod:`distillguard.limiting.outage`).
        outage_retry_after: the ``Retry-After`` of ``limiter_unavailable`` refusals.
        breaker_threshold: consecutive storage failures that open the circuit breaker.
        breaker_base_delay: seconds before the first probe of a failed storage (doubling).
        breaker_max_delay: the longest wait between probes.
        memory_max_keys: the key cap of the memory storage (also the local fallback).
    """

    default: str = "60/minute;1000/day"
    tiers: Mapping[str, str] = field(default_factory=dict)
    strategy: str = "moving-window"
    storage_uri: str = "memory://"
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    headers: bool = True
    header_style: str = "ietf"
    key_prefix: str = "dg"
    rules: Sequence[LimitRule] = ()
    tenant: str = ""
    auth_failures: str = ""
    concurrency: int | None = None
    concurrency_tiers: Mapping[str, int] = field(default_factory=dict)
    concurrency_scope: str = "storage"
    concurrency_lease: float = 600.0
    count_outputs: bool = True
    refund_server_errors: bool = False
    max_outputs: int = 4096
    chars_per_token: float = 4.0
    default_max_tokens: int = 1024
    outage: OutagePolicy = "local_fallback"
    outage_retry_after: int = 5
    breaker_threshold: int = 3
    breaker_base_delay: float = 1.0
    breaker_max_delay: float = 60.0
    memory_max_keys: int = 100_000

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(
                f"unknown limit strategy {self.strategy!r}; choose from {sorted(STRATEGIES)}"
            )
        if self.header_style not in HEADER_STYLES:
            raise ConfigurationError(
                f"LimitConfig.header_style must be one of {', '.join(HEADER_STYLES)}, "
                f"got {self.header_style!r}"
            )
        parse_limits(self.default)
        for tier, text in self.tiers.items():
            if not isinstance(tier, str) or not tier:
                raise ConfigurationError("tier names must be non-empty strings")
            parse_limits(text)
        if "://" not in self.storage_uri:  # not repeated: it may hold a password
            raise ConfigurationError(
                "storage_uri must be a storage URI such as memory:// or redis://127.0.0.1:6379/0"
            )
        self._validate_storage()
        parse_limits(self.tenant)
        parse_limits(self.auth_failures)
        names: set[str] = set()
        for rule in self.rules:
            if not isinstance(rule, LimitRule):
                raise ConfigurationError("LimitConfig.rules must hold LimitRule values")
            if rule.name in names:
                raise ConfigurationError(f"two limit rules are named {rule.name!r}")
            names.add(rule.name)
            if rule.strategy is not None and rule.strategy not in STRATEGIES:
                raise ConfigurationError(f"LimitRule {rule.name!r}: unknown strategy {rule.strategy!r}")
            if not parse_limits(rule.limits):
                raise ConfigurationError(f"LimitRule {rule.name!r} has no windows")
        caps = [self.concurrency, *self.concurrency_tiers.values()]
        if any(c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1) for c in caps):
            raise ConfigurationError("concurrency caps must be positive integers")
        if self.concurrency_scope not in ("storage", "process"):
            raise ConfigurationError(
                f"LimitConfig.concurrency_scope must be storage or process, got {self.concurrency_scope!r}"
            )
        if not self.concurrency_lease >= 1.0:
            raise ConfigurationError("LimitConfig.concurrency_lease must be at least 1 second")
        if self.max_outputs < 1:
            raise ConfigurationError("LimitConfig.max_outputs must be at least 1")
        if not self.chars_per_token > 0 or self.default_max_tokens < 0:
            raise ConfigurationError("chars_per_token must be > 0 and default_max_tokens >= 0")
        if self.outage not in get_args(OutagePolicy):
            raise ConfigurationError(f"LimitConfig.outage must be one of {get_args(OutagePolicy)}")
        if self.outage_retry_after < 1 or self.breaker_threshold < 1:
            raise ConfigurationError("outage_retry_after and breaker_threshold must be at least 1")
        if not 0 < self.breaker_base_delay <= self.breaker_max_delay:
            raise ConfigurationError("need 0 < breaker_base_delay <= breaker_max_delay")
        if self.memory_max_keys < 16:
            raise ConfigurationError("memory_max_keys must be at least 16")

    def _validate_storage(self) -> None:
        scheme = self.storage_uri.split("://", 1)[0]
        if scheme.startswith("async+"):
            raise ConfigurationError("give storage_uri without 'async+': the ASGI adapter adds it")
        check_storage_uri(self.storage_uri, self.storage_options)

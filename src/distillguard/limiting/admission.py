"""Admission around the pipeline: the limit steps that come before and after it.

:func:`admit` wraps :func:`distillguard.flow.evaluate` (sans-IO, like it):

1. **Before verification**: an address over its failed-authentication windows
   (``LimitConfig.auth_failures``) gets 429 for any request carrying a token; no signature is
   checked. After the pipeline, an invalid token charges those windows.
2. **Refusals keep nothing**: when the decision refuses a request (a window, a detector block,
   the concurrency cap), every window it was charged on is refunded.
3. **Outage**: a window refused because the storage is down under ``fail_closed`` becomes 503
   ``limiter_unavailable`` with ``Retry-After``.
4. **Concurrency**: an admitted request takes a slot of its client's cap, or gets 429: a lease
   on the shared storage (:class:`~distillguard.limiting.concurrency.SharedSlot`), or in
   process with ``memory://``, with ``concurrency_scope="process"``, and while the storage is
   down under ``local_fallback`` (``fail_open`` admits uncounted, ``fail_closed`` answers 503).
5. **Budget**: token windows and the slot go on the decision as a
   :class:`~distillguard.limiting.budget.Budget` for the exchange to settle and release (with
   ``LimitConfig.refund_server_errors``, the request windows too, refunded after a 5xx).
"""

from __future__ import annotations

import secrets
from collections.abc import Generator
from dataclasses import replace
from typing import TYPE_CHECKING

from ..decision import Action, Decision
from ..flow import Effect, Flow, HitLimit
from ..problems import Problem
from ..request import GuardRequest, bearer_token
from .budget import Budget
from .concurrency import SharedSlot, Slot, slot_key
from .effects import AcquireSlot, RefundLimit
from .headers import retry_after, violated_policies
from .plan import LimitCheck, LimitOutcome, LimitPlan

if TYPE_CHECKING:
    from ..guard import Guard

__all__ = ["admit"]


def _refund(outcomes: tuple[LimitOutcome, ...]) -> Generator[Effect, object, None]:
    for outcome in outcomes:
        if outcome.counted:
            yield RefundLimit(outcome.check, outcome.check.cost, outcome.mode)


_FULL = "full"


def _take_slot(
    plan: LimitPlan, owner: str, cap: int, now: float
) -> Generator[Effect, object, Slot | SharedSlot | str | None]:
    """A slot of ``owner``'s cap: the slot, ``None`` when the client may go uncounted (the
    storage is down under ``fail_open``), ``"full"`` at the cap, or ``"closed"`` (the storage is
    down under ``fail_closed``)."""
    if not plan.shares_concurrency:
        return plan.concurrency.acquire(owner, cap) or _FULL
    lease = plan.config.concurrency_lease
    key, token = slot_key(owner), secrets.token_hex(8)
    mode = yield AcquireSlot(key, cap, int(lease * 1000), token)
    if mode == "primary":
        return SharedSlot(key, token, lease, now)
    if mode == "fallback" or isinstance(mode, BaseException):  # counted here, as the windows are
        return plan.concurrency.acquire(owner, cap) or _FULL
    if mode == "open":
        return None
    return str(mode)  # "full" or "closed"


def admit(guard: Guard, request: GuardRequest, inner: Flow) -> Flow:
    """Run ``inner`` (the pipeline of ``request``) with the admission steps around it."""
    plan = guard.plan
    now = request.timestamp
    shadow = guard.policy.shadow
    auth_checks: tuple[LimitCheck, ...] = ()
    if (
        guard.verifier is not None
        and request.identity is None
        and bearer_token(request.authorization) is not None
    ):
        auth_checks = plan.auth_failure_checks(request.client_address)
        for check in auth_checks:
            outcome = yield HitLimit(check, now, charge=False)
            if (
                isinstance(outcome, LimitOutcome)
                and not outcome.allowed
                and outcome.mode in ("primary", "fallback")
                and not shadow
            ):
                inner.close()
                return Decision(
                    action=Action.RATE_LIMITED,
                    problem=Problem.rate_limited(retry_after([outcome], now), violated_policies([outcome])),
                    auth_failure="address_limited",
                    limits=(outcome,),
                )

    decision = yield from inner

    if auth_checks and decision.action is Action.UNAUTHENTICATED and decision.auth_failure != "missing":
        for check in auth_checks:
            yield HitLimit(check, now)
    if decision.problem is not None:
        yield from _refund(decision.limits)
        if any(o.mode == "closed" for o in decision.limits):
            retry = plan.config.outage_retry_after
            return replace(
                decision,
                action=Action.UNAVAILABLE,
                problem=Problem.unavailable("limiter_unavailable", retry),
                headers=(),
            )
        return decision

    identity = decision.identity
    slot: Slot | SharedSlot | None = None
    cap = plan.concurrency_cap(identity) if identity is not None else None
    if identity is not None and cap is not None:
        taken = yield from _take_slot(plan, plan.owner(identity), cap, now)
        if isinstance(taken, str):
            if shadow:  # a shadow guard refuses nothing
                taken = None
            else:
                yield from _refund(decision.limits)
                if taken == "closed":
                    problem = Problem.unavailable("limiter_unavailable", plan.config.outage_retry_after)
                    action = Action.UNAVAILABLE
                else:
                    problem, action = Problem.rate_limited(1, [f"concurrency-{cap}"]), Action.RATE_LIMITED
                return replace(decision, action=action, problem=problem, headers=(), body=None)
        slot = taken
    charges = tuple((o.check, o.mode) for o in decision.limits if o.counted and o.check.unit != "requests")
    refunds: tuple[tuple[LimitCheck, str], ...] = ()
    if plan.config.refund_server_errors:
        refunds = tuple(
            (o.check, o.mode) for o in decision.limits if o.counted and o.check.unit == "requests"
        )
    if charges or refunds or slot is not None:
        estimate = plan.estimate(decision.query) if charges else None
        budget = Budget(charges=charges, refunds=refunds, estimate=estimate, slot=slot)
        decision = replace(decision, budget=budget)
    return decision

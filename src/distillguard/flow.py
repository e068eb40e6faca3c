"""The guard pipeline, written once as a sans-IO generator.

``evaluate`` yields *effects* (charge a limit window, run a detector) and receives their
results; the ASGI and WSGI adapters perform them with their own I/O (:mod:`distillguard._drivers`).
Everything that says *what* happens and *in what order* is here::

    identity -> scopes -> parse query -> limits -> detectors -> policy -> Decision

With a shared limit storage, the client's detector state is read before the detectors run and
written back after (:mod:`distillguard.detectors._sharing`).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias

from .decision import Action, Decision
from .detectors import DetectorResult, Observation
from .detectors._protocol import checked_result, forget_client
from .errors import AuthenticationError, ConfigurationError, StateError
from .identity import Identity
from .limiting import LimitCheck, LimitOutcome, WindowUsage
from .limiting.effects import (
    UNREAD,
    AcquireSlot,
    Charged,
    ChargeLimit,
    ForgetClient,
    HitLimits,
    JoinRecords,
    LoadState,
    RefundLimit,
    ReleaseSlot,
    RenewSlot,
    SaveState,
)
from .limiting.headers import ratelimit_fields, retry_after, retry_after_ms, violated_policies
from .policy import Policy, decide, detection_mode
from .problems import Problem
from .query import RESPONSES_LOGPROBS, Query, parse_query
from .request import GuardRequest, address_key, bearer_token, well_formed

if TYPE_CHECKING:
    from .detectors._sharing import StateShare
    from .guard import Guard
    from .risk import ClientStatus

__all__ = [
    "Effect",
    "Flow",
    "HitLimit",
    "RunDetector",
    "evaluate",
    "identify",
    "penalty_left",
    "release",
    "status",
    "usage",
]


@dataclass(frozen=True, slots=True)
class HitLimit:
    """Effect: charge ``check`` (or, with ``charge=False``, only read its window). The driver
    answers a :class:`LimitOutcome` (or the exception it hit)."""

    check: LimitCheck
    now: float
    charge: bool = True


@dataclass(frozen=True, slots=True)
class RunDetector:
    """Effect: score ``observation`` with ``detector``. The driver answers a
    :class:`DetectorResult` (or the exception the detector raised)."""

    detector: Any
    observation: Observation


Effect: TypeAlias = (
    HitLimit
    | HitLimits
    | RunDetector
    | ChargeLimit
    | RefundLimit
    | LoadState
    | SaveState
    | JoinRecords
    | ForgetClient
    | AcquireSlot
    | RenewSlot
    | ReleaseSlot
)
"""Anything the pipeline asks an adapter to do."""
Flow: TypeAlias = Generator[Effect, object, Decision]
"""The pipeline of one request."""


def _refunded(outcome: LimitOutcome) -> LimitOutcome:
    """``outcome`` as its window reads once a refused request's charge is taken back."""
    if not outcome.counted:
        return outcome
    return replace(outcome, remaining=min(outcome.check.item.amount, outcome.remaining + outcome.check.cost))


def _anonymous(request: GuardRequest) -> Identity:
    return Identity(client_id=f"ip:{address_key(request.client_address)}", tier="anonymous", anonymous=True)


def degrade_body(query: Query, policy: Policy) -> bytes | None:
    """The request body with ``policy.degrade_fields`` removed (and ``max_tokens`` capped), or
    ``None`` when nothing needs to change."""
    data = query.data
    if data is None:
        return None
    changed = {k: v for k, v in data.items() if k not in policy.degrade_fields}
    include = changed.get("include")
    if "logprobs" in policy.degrade_fields and isinstance(include, list) and RESPONSES_LOGPROBS in include:
        changed["include"] = [entry for entry in include if entry != RESPONSES_LOGPROBS]  # the Responses API
    cap = policy.degrade_max_tokens
    if cap is not None:
        for key in _over_cap(changed, cap):
            changed[key] = cap
    if changed == data:
        return None
    try:
        return json.dumps(changed, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (valid JSON "\ud800"): keep it escaped
        return json.dumps(changed, separators=(",", ":")).encode()


def _over_cap(data: Mapping[str, Any], cap: int) -> list[str]:
    """The token fields degrading sets to ``cap``: those the client sent over it (or not as an
    integer), or ``max_tokens`` when it sent neither."""
    present = [k for k in ("max_tokens", "max_completion_tokens") if k in data]
    return [k for k in present or ["max_tokens"] if not isinstance(data.get(k), int) or data[k] > cap]


def _degraded(query: Query, policy: Policy) -> str:
    """What degrading ``query`` takes out, for ``Policy.degrade_header``: ``logprobs`` (the
    answer's, always stripped), the request fields removed, and ``max_tokens`` when capped."""
    data = query.data or {}
    taken = dict.fromkeys(["logprobs", *(f for f in policy.degrade_fields if f in data)])
    cap = policy.degrade_max_tokens
    if cap is not None and _over_cap(data, cap):
        taken["max_tokens"] = None
    return ",".join(taken)


def _limits(
    checks: tuple[LimitCheck, ...], now: float, state: LoadState | None = None, charge: bool = True
) -> Generator[Effect, object, tuple[list[LimitOutcome], object]]:
    """Charge every window of the request at once (one Redis round trip, all or nothing, when
    the storage allows; see :mod:`distillguard.limiting.limiter`). If the performer cannot, charge
    each window in order, only reading those after the first that refuses; the windows already
    charged are refunded when the request is refused (:mod:`distillguard.limiting.admission`).

    With ``state``, the client's detector state is read in the same round trip; the second
    value is what was read, or ``UNREAD``. With ``charge`` false every window is only read."""
    if checks:
        batch = yield HitLimits(checks, now, state, charge)
        if isinstance(batch, Charged):
            return list(batch.outcomes), batch.state
        if isinstance(batch, tuple):
            return list(batch), UNREAD
    outcomes: list[LimitOutcome] = []
    for check in checks:
        outcome = yield HitLimit(check, now, charge=charge)
        if not isinstance(outcome, LimitOutcome):
            outcome = LimitOutcome(
                check=check, allowed=True, remaining=0, reset_at=now, error=type(outcome).__name__
            )
        outcomes.append(outcome)
        if not outcome.allowed:
            charge = False
    return outcomes, UNREAD


Scored: TypeAlias = tuple[list[DetectorResult], tuple[str, ...]]
"""Each detector's result, and the names of the detectors that failed."""


def _score(
    kinds: tuple[tuple[Any, bool], ...], observation: Observation, policy: Policy
) -> Generator[Effect, object, Scored]:
    """Run each detector (``(detector, plugin)``: a plugin's result is checked before anything
    reads it); a detector that fails gets the ``on_error`` score and the reason ``error``."""
    results: list[DetectorResult] = []
    failed: tuple[str, ...] = ()
    for detector, plugin in kinds:
        result = yield RunDetector(detector, observation)
        if plugin:
            result = checked_result(result, detector.name)
        if not isinstance(result, DetectorResult):
            result = DetectorResult(detector.name, 1.0 if policy.on_error == "block" else 0.0, ("error",))
            failed += (detector.name,)
        results.append(result)
    return results, failed


def _share(
    share: StateShare,
    client_id: str,
    kinds: tuple[tuple[Any, bool], ...],
    observation: Observation,
    policy: Policy,
    scored: Scored,
) -> Generator[Effect, object, Scored]:
    """Write the client's detector state back. When another replica wrote it after this
    request read it (requests of one client served at once), take that state, score this
    request again with the sharing detectors (once), and write the result: no query is lost."""
    results, failed = scored
    expected = share.known(client_id)
    for attempt in (1, 2):
        state = share.export(client_id)
        if state is None:
            break
        saved = yield SaveState(share.key(client_id), state[0], state[1], share.ttl_ms, expected)
        if saved is True or not isinstance(saved, (tuple, list)):
            share.count(saved is True, True)
            break
        if attempt == 2:  # a second conflict in a row: the stored state stays, and this replica's
            break
        share.install(client_id, saved, replace=True)  # the other replica's, without this query
        share.retried += 1
        expected = share.known(client_id)
        sharing = tuple(kind for kind in kinds if kind[0] in share)
        again, again_failed = yield from _score(sharing, observation, policy)
        redone = {r.detector: r for r in again}
        results = [redone.get(r.detector, r) for r in results]
        failed = (*(name for name in failed if name not in redone), *again_failed)
    return results, failed


def _join_records(
    detectors: tuple[Any, ...], share: StateShare | None
) -> Generator[Effect, object, tuple[str, ...]]:
    """Send each record-sharing detector's joins to the shared storage and hand it what the
    storage answers (see :func:`~distillguard.detectors._sharing.shares_records`; counted on
    ``share``); the names of the detectors whose exchange failed. A detector that raises here
    loses the exchange, never the request."""
    failed: tuple[str, ...] = ()
    for detector in detectors:
        try:
            joins = tuple(detector.shared_records())
        except Exception:
            failed += (detector.name,)
            continue
        if not joins:
            continue
        answer = yield JoinRecords(joins)
        if isinstance(answer, list) and len(answer) == len(joins):
            try:
                detector.absorb_records(joins, answer)
            except Exception:
                failed += (detector.name,)
        elif answer is not None:  # the storage did not answer: this replica's records only
            failed += (detector.name,)
        if share is not None:
            share.records += len(joins)
    if share is not None:
        share.records_failed += len(failed)
    return failed


def _released(guard: Guard, risk: Any, client: str, read: LimitOutcome) -> bool:
    """Whether the release window ``read`` shows a release of ``client`` this process has not
    seen; what this process holds on the client (risk, box, detector states) is then forgotten."""
    if not risk.released(client, risk.count_of(read.remaining), read.reset_at):
        return False
    _forget(guard, client)
    guard.telemetry.metrics.record_release("seen")
    return True


def _forget(guard: Guard, client: str) -> None:
    """Forget ``client``'s detector states in this process (see :func:`forget_client`)."""
    for detector in guard.detectors:
        forget_client(detector, client)
    if guard.state_share is not None:
        guard.state_share.forget(client)


def release(guard: Guard, identity: Identity) -> Generator[Effect, object, bool]:
    """Release ``identity``'s client: forget its risk, penalty box and detector states in this
    process, and, when the risk state is shared, clear its box and level windows, delete its
    shared detector state and count the release, which every replica reads with the client's
    next request and then forgets what it holds too. Whether the release was shared; raises
    :class:`~distillguard.errors.StateError` when the shared storage failed."""
    subject = _subject(guard, identity)
    client = subject.client_id
    _forget(guard, client)
    risk = guard.risk
    clear: tuple[LimitCheck, ...] = ()
    count = None
    if risk is not None:
        risk.forget(client)
        clear = tuple(c for c in (risk.box_check(subject), risk.level_check(subject)) if c is not None)
        count = risk.release_check(subject)
    share = guard.state_share
    state = share.key(client) if share is not None else None
    if not clear and state is None and count is None:
        return False
    answer = yield ForgetClient(clear, state, count)
    if isinstance(answer, BaseException):
        raise StateError(f"the release of a client did not reach the limit storage: {answer}") from answer
    return answer is True and count is not None  # without the count, other replicas keep theirs


def status(guard: Guard, identity: Identity, now: float) -> Generator[Effect, object, ClientStatus]:
    """Where the risk policy stands on ``identity``'s client: this process's risk and box, and,
    when they are shared, the box, level and releases the storage holds (read at cost 0: nothing
    is charged, nothing forgotten)."""
    risk = guard.risk
    if risk is None:
        raise ConfigurationError("the guard has no risk policy (Policy(risk=RiskPolicy()))")
    subject = _subject(guard, identity)
    checks = risk.status_checks(subject)
    read = None
    if checks:
        outcomes, _ = yield from _limits(checks, now)
        if len(outcomes) == len(checks) and all(o.mode == "primary" for o in outcomes):
            read = outcomes
    return risk.status(subject.client_id, now, read)


def usage(
    guard: Guard, identity: Identity, path: str | None, model: str | None, now: float
) -> Generator[Effect, object, tuple[WindowUsage, ...]]:
    """How much of each window of ``identity``'s requests to ``path`` for ``model`` is used
    (:meth:`~distillguard.limiting.plan.LimitPlan.windows_for`), read in one round trip where
    the storage allows; nothing is charged."""
    checks = guard.plan.windows_for(identity, path, model)
    if not checks:
        return ()
    outcomes, _ = yield from _limits(checks, now, charge=False)
    failed = next((o.error or o.mode for o in outcomes if o.mode != "primary" or o.error), None)
    if failed is not None or len(outcomes) != len(checks):
        raise StateError(f"the limit storage did not answer the read of the windows ({failed})")
    return tuple(WindowUsage.of(o) for o in outcomes)


def identify(guard: Guard, request: GuardRequest) -> Identity | Decision:
    """Who is calling (pure CPU), or the refusal when the token does not say (401, 403, 503)."""
    verifier = guard.verifier
    if request.identity is not None:
        return request.identity
    if verifier is None:
        return _anonymous(request)
    realm = verifier.realm
    token = bearer_token(request.authorization)
    if token is None:
        return Decision(
            action=Action.UNAUTHENTICATED, problem=Problem.missing_token(realm), auth_failure="missing"
        )
    try:
        identity = verifier.verify(token)  # a cached token is well-formed: checked on failure only
    except AuthenticationError as exc:
        if not well_formed(token):
            return Decision(
                action=Action.UNAUTHENTICATED,
                problem=Problem.invalid_request(realm),
                auth_failure="malformed",
            )
        if exc.reason == "keys_unavailable":  # no key set yet: the token may be fine
            retry = getattr(exc, "retry_after", 5)
            return Decision(
                action=Action.UNAVAILABLE,
                problem=Problem.unavailable("auth_unavailable", retry),
                auth_failure=exc.reason,
            )
        return Decision(
            action=Action.UNAUTHENTICATED, problem=Problem.invalid_token(realm), auth_failure=exc.reason
        )
    missing = verifier.missing_scopes(identity, request.path)
    if missing:
        return Decision(
            action=Action.FORBIDDEN, identity=identity, problem=Problem.insufficient_scope(realm, missing)
        )
    return identity


def _boxed(
    identity: Identity, policy: Policy, left: float, limits: tuple[LimitOutcome, ...] = ()
) -> Decision:
    """The refusal of a client in the penalty box for ``left`` more seconds."""
    return Decision(
        action=Action.BLOCK,
        identity=identity,
        problem=Problem.suspicious_usage(policy.block_status, max(1, int(left) + 1)),
        reasons=("risk:penalty_box",),
        limits=limits,
    )


def _subject(guard: Guard, identity: Identity) -> Identity:
    """Whom the detectors, the risk and the penalty box follow: the client, within its tenant
    when several issuers are accepted (the same ``sub`` of two issuers is two clients)."""
    owner = guard.plan.owner(identity)
    return identity if owner == identity.client_id else replace(identity, client_id=owner)


def penalty_left(guard: Guard, identity: Identity, now: float) -> Generator[Effect, object, float | None]:
    """The seconds ``identity``'s client has left in the penalty box (``None``: it is not boxed,
    or the box does not hold it: no risk policy, shadow mode, a tier not enforced). With a
    shared box, reads it (one round trip): a box set by another replica counts."""
    policy = guard.policy
    risk = guard.risk
    if risk is None or policy.shadow or detection_mode(policy, identity.tier) != "enforce":
        return None
    subject = _subject(guard, identity)
    until = risk.boxed_until(subject.client_id, now)
    box = risk.box_check(subject) if until is None else None
    if box is not None:
        outcomes, _ = yield from _limits((box,), now)
        if outcomes and outcomes[0].mode in ("primary", "fallback") and not outcomes[0].allowed:
            until = risk.box(subject.client_id, now, outcomes[0].reset_at)
    return None if until is None else until - now


def evaluate(guard: Guard, request: GuardRequest) -> Flow:
    """Decide one request. See the module docstring for the order of steps."""
    policy = guard.policy
    now = request.timestamp
    identity = identify(guard, request)
    if isinstance(identity, Decision):
        return identity
    subject = _subject(guard, identity)
    client = subject.client_id

    mode = detection_mode(policy, identity.tier)
    risk = guard.risk if mode != "off" else None
    box: LimitCheck | None = None  # the client's window in the shared penalty box
    level: LimitCheck | None = None  # its shared level (flag, throttle, degrade)
    release: LimitCheck | None = None  # and its releases (Guard.release)
    if risk is not None and not policy.shadow and mode == "enforce":  # the box holds across routes
        box = risk.box_check(subject)
        level = risk.level_check(subject)
        release = risk.release_check(subject)
        until = risk.boxed_until(client, now)
        if until is not None:
            if release is None:
                return _boxed(identity, policy, until - now)
            # boxed here and in the shared box, unless released since: read that (nothing charged)
            releases, _ = yield from _limits((release,), now)
            if not (
                releases and releases[0].mode == "primary" and _released(guard, risk, client, releases[0])
            ):
                return _boxed(identity, policy, until - now)

    query = parse_query(request.body, request.content_type, request.path)
    plan = guard.plan
    if query.n > 1 or query.inputs > 1:  # a request asking for many outputs at once
        most = plan.config.max_outputs
        if plan.weight(query) > most:
            detail = f"A request may ask for at most {most} outputs (n times the prompts or inputs)."
            return Decision(
                action=Action.BAD_REQUEST,
                identity=identity,
                problem=Problem.bad_body("too_many_outputs", detail),
                query=query,
            )
    checks = plan.checks_for(identity, request.path, query)
    if box is not None and level is not None and release is not None:  # read in the same round
        checks = (box, level, release, *checks)  # trip, first: a boxed client is charged nothing
    share = guard.state_share if mode != "off" else None
    load = None  # the client's detector state as other replicas left it, read with the windows
    if share is not None:
        load = LoadState(share.key(client), share.known(client))
    outcomes, stored = yield from _limits(checks, now, load)
    shared_level = 0
    if box is not None and outcomes and outcomes[0].mode in ("primary", "fallback"):
        read, outcomes = outcomes[0], outcomes[1:]
        if outcomes and outcomes[0].check is level:
            shared_level = risk.level_of(outcomes[0].remaining) if risk is not None else 0
            outcomes = outcomes[1:]
        if outcomes and outcomes[0].check is release:
            if risk is not None and _released(guard, risk, client, outcomes[0]):
                shared_level = 0  # read before the release reached this replica: gone with it
            outcomes = outcomes[1:]
        if not read.allowed and risk is not None:  # another replica boxed the client
            until = risk.box(client, now, read.reset_at)
            return _boxed(identity, policy, until - now, tuple(outcomes))
    refused = [o for o in outcomes if not o.allowed]
    # a window that is never disclosed refused it: the others' fields would say there is room
    hidden = any(not o.check.headers for o in refused)
    config = plan.config
    disclosed = config.headers and not hidden
    # a refused request's charges are taken back: its windows are shown as they will read
    shown = tuple(map(_refunded, outcomes)) if refused and not policy.shadow else tuple(outcomes)
    headers = tuple(ratelimit_fields(shown, now, config.header_style)) if disclosed else ()
    errors = tuple(f"limiter:{o.error}" for o in outcomes if o.error is not None)
    if refused:
        # a request that costs more than a window's whole quota: no wait admits it
        over = [o for o in refused if o.check.cost > o.check.item.amount]
        limited = (
            Problem.over_quota(violated_policies(over))
            if over
            else Problem.rate_limited(retry_after(refused, now), violated_policies(refused))
        )
        if not policy.shadow:
            if disclosed and config.header_style != "ietf" and not over:  # the exact wait, for OpenAI's SDKs
                headers = (*headers, ("retry-after-ms", str(retry_after_ms(refused, now))))
            boxed: tuple[str, ...] = ()
            if risk is not None and mode == "enforce" and risk.refused(client, now) is not None:
                boxed = ("risk:penalty_box", "risk:refusals")  # from its next request on
                if box is not None:  # tell the other replicas
                    yield ChargeLimit(box, box.item.amount + 1)
            return Decision(
                action=Action.RATE_LIMITED,
                identity=identity,
                problem=limited,
                query=query,
                limits=shown,  # as the RateLimit fields and the span show them
                reasons=boxed,
                headers=headers,
                errors=errors,
            )

    observation = Observation(
        identity=subject,
        timestamp=now,
        method=request.method,
        route=request.path,
        query=query,
        client_address=request.client_address,
        user_agent=request.user_agent,
    )
    unread = False  # the storage did not answer the read: the write would wait on it too
    if share is not None and load is not None:
        if stored is UNREAD:  # no window to charge, or a driver without the combined read
            stored = yield load
        if isinstance(stored, BaseException):
            share.count(False, False)
            unread = True
        else:
            share.install(client, stored)
    kinds = guard.detector_kinds if mode != "off" else ()
    held = risk.token(client) if risk is not None else None  # the history the scores are of
    scored = yield from _score(kinds, observation, policy)
    if share is not None and not unread:
        scored = yield from _share(share, client, kinds, observation, policy, scored)
    results, failed = scored
    errors += tuple(f"detector:{name}" for name in failed)
    if guard.record_sharers and mode != "off" and not unread:
        errors += tuple(f"records:{name}" for name in (yield from _join_records(guard.record_sharers, share)))

    if risk is None:
        action, score, reasons = decide(results, policy)
    elif held is not None and risk.token(client) is not held:
        # released while it was judged: its scores are of the history the release forgot
        action, score, reasons = Action.ALLOW, 0.0, ("risk:released",)
    else:
        verdict = risk.assess(client, results, now, risk.floor(shared_level))
        action, score, reasons = verdict.action, verdict.risk, verdict.reasons
        if level is not None and risk.level(verdict) > shared_level:  # tell the other replicas
            yield ChargeLimit(level, risk.level(verdict) - shared_level)
        if verdict.throttle and not refused:  # a throttled client is charged a tighter window
            throttled, _ = yield from _limits(risk.throttle_checks(subject), now)
            outcomes = [*outcomes, *throttled]
            refused_throttle = [o for o in throttled if not o.allowed]
            if refused_throttle and action is not Action.BLOCK:
                action = Action.THROTTLE
                reasons = (*reasons, *(f"throttle:{o.check.policy}" for o in refused_throttle))
    if refused:  # shadow mode let a rate-limited request through
        return Decision(
            action=Action.RATE_LIMITED,
            identity=identity,
            query=query,
            limits=tuple(outcomes),
            results=tuple(results),
            score=score,
            reasons=reasons,
            shadow=True,
            headers=headers,
            errors=errors,
        )
    problem: Problem | None = None
    body = None
    if action is Action.BLOCK and box is not None:  # tell the other replicas
        yield ChargeLimit(box, box.item.amount + 1)
    if action is Action.BLOCK:
        problem = Problem.suspicious_usage(policy.block_status, policy.block_retry_after)
    elif action is Action.THROTTLE:
        blocked = [o for o in outcomes if not o.allowed]
        problem = Problem.rate_limited(retry_after(blocked, now), violated_policies(blocked))
    elif action is Action.DEGRADE:  # from the bytes the client sent: a detector may have
        # changed the parsed document it was shown, which must never reach the app
        sent = parse_query(request.body, request.content_type, request.path)
        body = degrade_body(sent, policy)
    watched = policy.shadow or mode == "shadow"  # scored and recorded, never acted on
    shadow = watched and action in (Action.BLOCK, Action.DEGRADE, Action.THROTTLE)
    if action is not Action.ALLOW and not watched:
        headers = ()  # a suspected extractor gets no quota to pace itself on; a shadow verdict
        # changes nothing the client sees, its RateLimit fields included
        if action is Action.DEGRADE and policy.degrade_header is not None:
            headers = ((policy.degrade_header.lower(), _degraded(sent, policy)),)
    return Decision(
        action=action,
        identity=identity,
        problem=None if shadow else problem,
        query=query,
        limits=tuple(outcomes),
        results=tuple(results),
        score=score,
        reasons=reasons,
        shadow=shadow,
        headers=headers,
        body=None if shadow else body,
        errors=errors,
    )

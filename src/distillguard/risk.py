"""The risk policy: detector scores become a per-client risk that decays over time.

**Evidence.** Each detector's score ``s`` is first put on a common scale with its calibrated
threshold ``t`` (the percentile of its benign null, see :func:`calibrate`): piecewise linear,
``[0, t] -> [0, flag]`` and ``[t, 1] -> [flag, 1]``, so that a score at the benign percentile
lands exactly on the flag level (the same mapping as ``distillguard calibrate``'s thresholds
file). Detectors without a threshold are used as they are, times an optional weight.

**Risk.** A client's risk is ``max(evidence now, risk before * 2 ** (-elapsed / half_life))``:
it jumps with the strongest current evidence and decays with the configured half-life once the
evidence stops. (``combine="noisy_or"`` uses ``1 - prod(1 - e)`` over the detectors instead of
the maximum, so that several moderate signals add up.)

**Verdict.** Thresholds on the risk, each level including the ones below it:

* ``flag``: recorded on the span (decision ``flag``), served unchanged;
* ``throttle``: the client is also charged against ``throttle_limits`` (e.g. ``"6/minute"``);
  past it the request is refused with 429 ``rate_limited`` (decision ``throttle``);
* ``degrade``: log probabilities and logit_bias are stripped (the policy's ``degrade_fields``);
* ``block``: refused with ``suspicious_usage``, and the client goes into the *penalty box* for
  ``penalty_seconds``: every request with that identity, on every route, is refused before the
  limits or the detectors run.

**Several replicas.** Risk is kept per process. The penalty box is too, and when the limit
storage is shared (Redis: ``LimitConfig.storage_uri`` other than ``memory://``) it is also kept
there (``shared``, on by default): a block by one replica is written to the storage as a
window that expires with the penalty, and every replica reads that window in the same round
trip as the request's own limits (no extra round trip on a single Redis or a Redis Cluster;
one more read per request with the sliding window counter). A replica that finds a client
boxed there keeps the box locally too and stops asking. The client's *level* is shared the same
way: a replica whose verdict flags, throttles or degrades a client raises a counter (1, 2, 3)
that expires after ``half_life``, and every replica reads it with the request and takes the
risk of that level as a floor, so that a client degraded by one replica is degraded by all. If
the storage is unreachable each replica's own box and risk still hold.

**Memory.** The risk table holds at most ``max_clients`` clients (LRU, evictions counted). The
penalty box is a separate table of at most ``max_penalties`` entries; a flood of new identities
only churns the risk table and can never push a boxed client out. When the box itself is full,
expired entries go first, then the one closest to its release. The shared releases a replica
has applied are a third table (at most ``max_penalties`` released clients, oldest out first),
so that evicting a released client's risk entry does not make the same release look new and
wipe the history the client built since.

**Shadow mode** (``Policy.shadow``): everything is computed and recorded, the box is kept, but
nothing is refused or altered.

**Span.** The decision's score is the risk; its reasons name the level (``risk:block``), the
detectors that drove it (``near_duplicate:near_duplicate_rate``) and their numeric signals
(``signal:near_duplicate.rate=0.91``); never request contents.

**Default thresholds.** The detectors' own score ramps are set so that the benign traffic used
to build them (a generator of varied conversational users and the 666 in-the-wild jailbreak
prompts, see ``docs/detectors.md``) stays below 0.5; a deployment re-derives the per-detector
thresholds from its own benign log with ``distillguard calibrate`` (99.9th percentile of the
per-client-day maxima) and passes them as ``RiskPolicy(thresholds=...)``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from limits import RateLimitItemPerSecond

from .decision import Action
from .detectors import DetectorResult
from .errors import ConfigurationError
from .identity import Identity
from .limiting import LimitCheck, LimitOutcome
from .limiting.config import parse_limits
from .limiting.plan import policy_name
from .limiting.storage import hash_tag

__all__ = ["ClientStatus", "RiskEngine", "RiskPolicy", "RiskVerdict", "calibrate", "rescale"]

_LEVEL_ROOM = 1_000_000
_RELEASE_MEMORY = 7 * 86_400.0  # how long the shared storage remembers that a client was released


def _read_window(name: str, kind: str, item: RateLimitItemPerSecond) -> LimitCheck:
    """A window of the shared risk state, read at cost 0 with the request's windows (fixed,
    never disclosed), keyed ``(kind, client)`` (:func:`_for_client`)."""
    return LimitCheck(policy=name, item=item, key=(kind,), cost=0, headers=False, strategy="fixed-window")


def _for_client(window: LimitCheck | None, identity: Identity, cluster: bool) -> LimitCheck | None:
    """``window`` keyed for ``identity`` (``None`` when the state is not shared), behind the
    client's hash tag on a Redis Cluster (with its other keys)."""
    if window is None:
        return None
    key = (window.key[0], identity.client_id)
    return replace(window, key=(hash_tag(identity.client_id), *key) if cluster else key)


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskPolicy:
    """How detector scores become a client risk, and what each risk level does.

    Args:
        flag: risk at or above this flags the request.
        throttle: risk at or above this also charges ``throttle_limits`` (``None`` disables).
        degrade: risk at or above this strips log probabilities (``None`` disables).
        block: risk at or above this refuses the request and boxes the client (``None``
            disables).
        half_life: seconds for a client's risk to halve once the evidence stops.
        throttle_limits: the extra windows of a throttled client (``limits`` notation).
        penalty_seconds: how long a blocked client stays in the penalty box.
        box_after_refusals: put a client in the penalty box once its limits have refused it
            this many times within ``refusal_window`` seconds (a client hammering past its
            quota, as a script does and a person does not); ``None`` (the default) never.
        refusal_window: the window of ``box_after_refusals``, in seconds.
        thresholds: calibrated per-detector thresholds (see :func:`calibrate`).
        weights: per-detector multipliers of the evidence (1 when absent).
        combine: ``"max"`` (the strongest evidence) or ``"noisy_or"``.
        max_clients: the cap on clients with a tracked risk.
        max_penalties: the cap on boxed clients.
        shared: also keep the penalty box and each client's level (flag, throttle, degrade) in
            the limit storage when that storage is shared (``LimitConfig.storage_uri`` other
            than ``memory://``), so that a client one replica blocks or degrades is blocked or
            degraded by every replica (see the module docstring).
    """

    flag: float = 0.5
    throttle: float | None = 0.6
    degrade: float | None = 0.75
    block: float | None = 0.9
    half_life: float = 900.0
    throttle_limits: str = "6/minute"
    penalty_seconds: float = 3600.0
    box_after_refusals: int | None = None
    refusal_window: float = 60.0
    thresholds: Mapping[str, float] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    combine: Literal["max", "noisy_or"] = "max"
    max_clients: int = 100_000
    max_penalties: int = 10_000
    shared: bool = True

    def __post_init__(self) -> None:
        levels = [t for t in (self.flag, self.throttle, self.degrade, self.block) if t is not None]
        if any(not 0.0 < t <= 1.0 for t in levels):
            raise ConfigurationError("risk thresholds must be in (0, 1]")
        if levels != sorted(levels):
            raise ConfigurationError("risk thresholds must satisfy flag <= throttle <= degrade <= block")
        if not self.half_life > 0.0 or not self.penalty_seconds > 0.0:
            raise ConfigurationError("half_life and penalty_seconds must be positive")
        if self.combine not in ("max", "noisy_or"):
            raise ConfigurationError("combine must be 'max' or 'noisy_or'")
        if self.max_clients < 1 or self.max_penalties < 1:
            raise ConfigurationError("max_clients and max_penalties must be at least 1")
        for name, t in self.thresholds.items():
            if not 0.0 < t < 1.0:
                raise ConfigurationError(f"threshold of {name!r} must be in (0, 1)")
        if any(w < 0.0 for w in self.weights.values()):
            raise ConfigurationError("detector weights must be non-negative")
        if self.throttle is not None:
            parse_limits(self.throttle_limits)
        if self.box_after_refusals is not None and self.box_after_refusals < 1:
            raise ConfigurationError("box_after_refusals must be at least 1 (or None)")
        if not self.refusal_window > 0.0:
            raise ConfigurationError("refusal_window must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskVerdict:
    """What the risk policy decided for one request.

    Attributes:
        action: ``ALLOW``, ``FLAG``, ``DEGRADE`` or ``BLOCK`` (throttling is decided by the
            pipeline after charging :meth:`RiskEngine.throttle_checks`).
        risk: the client's risk after this request.
        throttle: whether the client is at or above the throttle level.
        boxed_until: when the client leaves the penalty box (unix seconds), if boxed.
        reasons: the level, the driving detectors and their signals.
    """

    action: Action
    risk: float
    throttle: bool = False
    boxed_until: float | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatus:
    """Where the risk policy stands on one client (:meth:`~distillguard.Guard.status`).

    Attributes:
        client_id: the client, as the guard keys it (within its tenant with several issuers).
        boxed_for: seconds the client has left in the penalty box (``None``: not boxed).
        level: 0 none, 1 flag, 2 throttle, 3 degrade or block: the higher of the level of its
            risk in this process and the level the shared storage holds.
        risk: its current (decayed) risk in this process, 0 to 1.
        driver: the detector whose evidence drove that risk last (``""``: none).
        releases: its releases still remembered by the shared storage (a week, or the
            penalty if longer).
        shared: whether the shared storage answered (the box, the level and the releases were
            read there; ``False`` with ``memory://``: this process only).
    """

    client_id: str
    boxed_for: float | None
    level: int
    risk: float
    driver: str
    releases: int
    shared: bool


def rescale(score: float, threshold: float, flag: float) -> float:
    """Map ``score`` so that ``threshold`` lands on ``flag`` (piecewise linear, 0 and 1 fixed)."""
    if score <= threshold:
        return score * flag / threshold
    return flag + (score - threshold) * (1.0 - flag) / (1.0 - threshold)


def calibrate(
    scores_by_detector: Mapping[str, Sequence[float]],
    percentile: float,
    *,
    floor: float = 0.5,
    ceiling: float = 0.95,
) -> dict[str, float]:
    """Per-detector thresholds: the ``percentile`` (0-100) of each detector's benign null.

    ``scores_by_detector`` holds, per detector, one score per benign sample: the highest score
    a benign client reached in one window (a client-day), so that the false-positive rate is
    per client-day. The percentile interpolates linearly between order statistics (numpy's
    default). Thresholds are clamped to ``[floor, ceiling]``: with the default floor (the
    default flag level) a detector whose benign null is near 0 keeps its own scale, and
    calibration only ever makes a detector less sensitive than its defaults. Pass the result as
    ``RiskPolicy(thresholds=...)``.

    Raises:
        ConfigurationError: for a percentile outside (0, 100), bounds outside (0, 1) or a
            detector without scores.
    """
    if not 0.0 < percentile < 100.0:
        raise ConfigurationError("percentile must be in (0, 100)")
    if not 0.0 < floor <= ceiling < 1.0:
        raise ConfigurationError("calibration bounds must satisfy 0 < floor <= ceiling < 1")
    out: dict[str, float] = {}
    for name, scores in scores_by_detector.items():
        if not scores:
            raise ConfigurationError(f"no benign scores for detector {name!r}")
        ordered = sorted(scores)
        rank = percentile / 100.0 * (len(ordered) - 1)
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        out[name] = min(ceiling, max(floor, value))
    return out


class _Client:
    __slots__ = ("driver", "refusals", "refusals_since", "risk", "ts")

    def __init__(self) -> None:
        self.risk = 0.0
        self.ts = 0.0
        self.driver = ""
        self.refusals = 0  # refused by its limits since ``refusals_since``
        self.refusals_since = 0.0


class RiskEngine:
    """The per-client risk state of one guard (in memory, per process).

    Args:
        policy: the risk policy.
        shared: whether the limit storage is shared by several processes (the penalty box is
            then kept there too when ``policy.shared``; see :meth:`box_check`).
        cluster: whether that storage is a Redis Cluster (the client's windows then carry its
            hash tag, as its other keys do).
    """

    def __init__(self, policy: RiskPolicy, shared: bool = False, cluster: bool = False) -> None:
        self.policy = policy
        self._cluster = cluster
        share = shared and policy.shared
        box_item = RateLimitItemPerSecond(1, math.ceil(policy.penalty_seconds))
        self._shared_box = _read_window("penalty-box", "box", box_item) if share else None
        # levels 1-3 as a count; a limit far above them, so that the read always fits (a
        # window that does not fit would stop the request's own windows being charged)
        level_item = RateLimitItemPerSecond(_LEVEL_ROOM, math.ceil(policy.half_life))
        self._shared_level = _read_window("risk-level", "level", level_item) if share else None
        # the releases of a client (Guard.release), counted for a week or the penalty if longer
        memory = math.ceil(max(policy.penalty_seconds, _RELEASE_MEMORY))
        release_item = RateLimitItemPerSecond(_LEVEL_ROOM, memory)
        self._shared_release = _read_window("released", "release", release_item) if share else None
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._box: OrderedDict[str, float] = OrderedDict()
        # the releases seen in each released client's shared window, (count, its reset): kept
        # apart from the risk table, whose evictions must not make a release look new again
        self._releases: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._decay = math.log(2.0) / policy.half_life
        self._throttle = (
            tuple((policy_name(item), item) for item in parse_limits(policy.throttle_limits))
            if policy.throttle is not None
            else ()
        )
        self.evictions = 0
        self.box_evictions = 0

    # -- the penalty box ------------------------------------------------------------------------

    def boxed_until(self, client_id: str, now: float) -> float | None:
        """When ``client_id`` leaves the penalty box, or ``None`` when it is not boxed."""
        until = self._box.get(client_id)
        if until is None:
            return None
        if until <= now:
            with self._lock:
                self._box.pop(client_id, None)
            return None
        return until

    def box(self, client_id: str, now: float, until: float | None = None) -> float:
        """Put ``client_id`` in the penalty box (until ``until``, by default for the policy's
        ``penalty_seconds``); return when it comes out."""
        if until is None:
            until = now + self.policy.penalty_seconds
        box = self._box
        with self._lock:
            if client_id not in box and len(box) >= self.policy.max_penalties:
                expired = [k for k, v in box.items() if v <= now]
                for k in expired:
                    del box[k]
                if len(box) >= self.policy.max_penalties:
                    del box[min(box, key=box.__getitem__)]
                    self.box_evictions += 1
            box[client_id] = max(until, box.get(client_id, 0.0))
        return box[client_id]

    def box_check(self, identity: Identity) -> LimitCheck | None:
        """The window that holds ``identity``'s place in the shared penalty box, or ``None``
        when the box is kept in this process only.

        The box is a fixed window of one request per ``penalty_seconds`` that the pipeline
        *reads* with every request (cost 0, in the same round trip as the request's own
        windows: it refuses once the window is over its limit) and *fills* past its limit when
        this process blocks the client (:class:`~distillguard.limiting.effects.ChargeLimit`);
        the storage expires it when the penalty ends."""
        return _for_client(self._shared_box, identity, self._cluster)

    def level_check(self, identity: Identity) -> LimitCheck | None:
        """The window holding ``identity``'s shared level (``None`` when not shared): read at
        cost 0 with the request (its count is the level), raised with
        :class:`~distillguard.limiting.effects.ChargeLimit` when this replica's verdict is
        higher; it expires ``half_life`` after it was first raised."""
        return _for_client(self._shared_level, identity, self._cluster)

    def release_check(self, identity: Identity) -> LimitCheck | None:
        """The window counting ``identity``'s releases (``None`` when not shared): read at cost
        0 with the request, charged by :meth:`~distillguard.Guard.release`; a replica that
        reads a release it has not seen forgets what it holds on the client
        (:meth:`released`)."""
        return _for_client(self._shared_release, identity, self._cluster)

    def released(self, client_id: str, count: int, reset_at: float) -> bool:
        """Whether the release window of ``client_id`` (``count`` releases, ending at
        ``reset_at``) shows a release this process has not seen; the client's risk and box are
        then forgotten here (the caller forgets the rest)."""
        if count <= 0:
            return False
        seen = self._releases.get(client_id)
        if seen is not None and seen[0] == count and abs(seen[1] - reset_at) < 2.0:
            return False  # the same window, no new release
        self.forget(client_id)
        releases = self._releases
        with self._lock:
            releases[client_id] = (count, reset_at)
            if len(releases) > self.policy.max_penalties:
                releases.popitem(last=False)
        self._client(client_id)  # a new risk state: a request judged meanwhile sees the release
        return True

    def token(self, client_id: str) -> object | None:
        """A mark of ``client_id``'s risk state as it is now (``None`` for a client without
        one). A request takes it before its detectors run; when :meth:`token` answers another
        one at its assessment, a release (here or seen from another replica) forgot the client
        in between, and the request's scores are of a history that is gone. (An eviction from
        the LRU looks the same, and costs that request its assessment.)"""
        return self._clients.get(client_id)

    def forget(self, client_id: str) -> None:
        """Drop ``client_id``'s risk and penalty box in this process."""
        with self._lock:
            self._clients.pop(client_id, None)
            self._box.pop(client_id, None)
            self._releases.pop(client_id, None)

    @staticmethod
    def count_of(outcome_remaining: int) -> int:
        """The count held by a shared read window (its level, or its releases)."""
        return max(0, _LEVEL_ROOM - outcome_remaining)

    @staticmethod
    def level_of(outcome_remaining: int) -> int:
        """The shared level read from its window's remaining quota."""
        return min(3, RiskEngine.count_of(outcome_remaining))

    def floor(self, level: int) -> float:
        """The risk a shared ``level`` stands for: its threshold (0 for none)."""
        policy = self.policy
        if level <= 0:
            return 0.0
        if level >= 3 and policy.degrade is not None:
            return policy.degrade
        if level >= 2 and policy.throttle is not None:
            return policy.throttle
        return policy.flag

    def status_checks(self, identity: Identity) -> tuple[LimitCheck, ...]:
        """The shared windows of ``identity`` that :meth:`status` reads (box, level, releases),
        empty when they are not shared."""
        checks = (self.box_check(identity), self.level_check(identity), self.release_check(identity))
        return tuple(c for c in checks if c is not None)

    def status(self, client_id: str, now: float, read: Sequence[LimitOutcome] | None) -> ClientStatus:
        """``client_id``'s status from this process's state and ``read``, the outcomes of
        :meth:`status_checks` (``None``: not shared, or the storage did not answer)."""
        policy = self.policy
        risk = self.risk(client_id, now)
        state = self._clients.get(client_id)
        level = 0
        for rank, threshold in enumerate((policy.flag, policy.throttle, policy.degrade or policy.block), 1):
            if threshold is not None and risk >= threshold:
                level = rank
        until = self.boxed_until(client_id, now)
        releases = 0
        if read is not None:
            box, shared_level, released = read
            if not box.allowed:
                until = max(until or 0.0, box.reset_at)
            level = max(level, self.level_of(shared_level.remaining))
            releases = self.count_of(released.remaining)
        return ClientStatus(
            client_id=client_id,
            boxed_for=None if until is None else max(0.0, until - now),
            level=level,
            risk=risk,
            driver=state.driver if state is not None and risk > 0.0 else "",
            releases=releases,
            shared=read is not None,
        )

    def level(self, verdict: RiskVerdict) -> int:
        """The level ``verdict`` puts its client at: 3 degrade (or block), 2 throttle, 1 flag."""
        if verdict.action in (Action.DEGRADE, Action.BLOCK):
            return 3
        if verdict.throttle:
            return 2
        return 1 if verdict.action is Action.FLAG else 0

    @property
    def boxed(self) -> int:
        """How many clients are in the penalty box (expired entries included until touched)."""
        return len(self._box)

    @property
    def tracked(self) -> int:
        """How many clients have a tracked risk."""
        return len(self._clients)

    # -- risk -------------------------------------------------------------------------------------

    def _evidence(self, result: DetectorResult) -> float:
        policy = self.policy
        score = result.score
        threshold = policy.thresholds.get(result.detector)
        if threshold is not None:
            score = rescale(score, threshold, policy.flag)
        weight = policy.weights.get(result.detector)
        if weight is not None:
            score = min(1.0, score * weight)
        return score

    def _client(self, client_id: str) -> _Client:
        clients = self._clients
        with self._lock:
            state = clients.get(client_id)
            if state is not None:
                clients.move_to_end(client_id)
                return state
            if len(clients) >= self.policy.max_clients:
                clients.popitem(last=False)
                self.evictions += 1
            state = clients[client_id] = _Client()
            return state

    def refused(self, client_id: str, now: float) -> float | None:
        """Count a refusal of ``client_id`` by its limits; box it when that makes
        ``box_after_refusals`` within ``refusal_window``, and return when it comes out
        (``None``: not boxed)."""
        most = self.policy.box_after_refusals
        if most is None:
            return None
        state = self._client(client_id)
        if now - state.refusals_since > self.policy.refusal_window:
            state.refusals, state.refusals_since = 0, now
        state.refusals += 1
        if state.refusals < most:
            return None
        state.refusals = 0
        return self.box(client_id, now)

    def risk(self, client_id: str, now: float) -> float:
        """The current (decayed) risk of ``client_id`` (0 for an unknown client)."""
        state = self._clients.get(client_id)
        if state is None:
            return 0.0
        return state.risk * math.exp(-self._decay * max(0.0, now - state.ts))

    def assess(
        self, client_id: str, results: Sequence[DetectorResult], now: float, floor: float = 0.0
    ) -> RiskVerdict:
        """Update ``client_id``'s risk with this request's detector results; return the verdict
        (a ``BLOCK`` also puts the client in the penalty box). ``floor`` is a risk the client
        has at least (the level another replica gave it, :meth:`floor`)."""
        policy = self.policy
        evidence = [(self._evidence(r), r) for r in results]
        if policy.combine == "max":
            current = max((e for e, _ in evidence), default=0.0)
        else:
            current = 1.0 - math.prod(1.0 - e for e, _ in evidence)
        state = self._client(client_id)
        decayed = state.risk * math.exp(-self._decay * max(0.0, now - state.ts)) if state.risk else 0.0
        drivers = [(e, r) for e, r in evidence if e >= policy.flag]
        shared = floor > decayed and floor > current  # another replica's level drives it
        if floor > decayed:
            decayed = floor
        if current >= decayed:
            risk = current
            if drivers:
                state.driver = max(drivers, key=lambda d: d[0])[1].detector
        else:
            risk = decayed
        state.risk = risk
        state.ts = max(now, state.ts)
        if risk < policy.flag:
            return RiskVerdict(action=Action.ALLOW, risk=risk)
        if policy.block is not None and risk >= policy.block:
            action, level = Action.BLOCK, "block"
        elif policy.degrade is not None and risk >= policy.degrade:
            action, level = Action.DEGRADE, "degrade"
        elif policy.throttle is not None and risk >= policy.throttle:
            action, level = Action.FLAG, "throttle"
        else:
            action, level = Action.FLAG, "flag"
        reasons = [f"risk:{level}"]
        if shared:
            reasons.append("carried:replica")
        elif not drivers and state.driver:
            reasons.append(f"carried:{state.driver}")
        for _, r in drivers:
            reasons.extend(f"{r.detector}:{reason}" for reason in r.reasons)
            reasons.extend(f"signal:{r.detector}.{k}={v:.4g}" for k, v in r.signals.items())
        boxed = self.box(client_id, now) if action is Action.BLOCK else None
        throttle = policy.throttle is not None and risk >= policy.throttle
        return RiskVerdict(
            action=action, risk=risk, throttle=throttle, boxed_until=boxed, reasons=tuple(reasons)
        )

    def throttle_checks(self, identity: Identity) -> tuple[LimitCheck, ...]:
        """The extra windows a throttled client is charged against (not disclosed in headers)."""
        key: tuple[str, ...] = ("risk", identity.client_id)
        if self._cluster:
            key = (hash_tag(identity.client_id), *key)
        return tuple(
            LimitCheck(policy=f"throttle-{name}", item=item, key=key, headers=False)
            for name, item in self._throttle
        )

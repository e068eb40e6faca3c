"""Multi-account campaign detector (``campaign``).

**Signal.** A campaign spreads one extraction sweep over many accounts that each stay far under
their limits, so no per-account detector sees enough of it. What the accounts share is the
*template family* (the slot-masked skeleton of :mod:`~distillguard.detectors._text`, hashed as the
``template_sweep`` detector hashes it) and a *group*: the same tenant (issuer), the same /24
(IPv4) or /48 (IPv6) prefix of ``client_address``, or the same user agent. With ``edge=4`` the
first and the last four skeleton words are families too, so that a fixed wrapper around natural
text ("Q: {question} A: Let's think step by step") is grouped even though the question's own
common words change the whole skeleton; this is off by default, because a legitimate integration
that many accounts share (a classification wrapper around each customer's own messages) then
looks exactly like a campaign: in the detection benchmark's benign population it flagged 128 of
4,728 client-days, all of them such users.

* **Membership.** Each account keeps its last ``window`` family keys. An account is
  *concentrated* on a family when at least ``recur`` of them (2) are that family and they make
  up at least ``min_share`` of its recent text requests (0.5); exact repeats of a prompt
  (retries) do not count. A concentrated account becomes a *member* of the family in each of its
  groups for ``horizon`` seconds (a day).
* **Benign null.** Shared skeletons are common in benign traffic too ("how do I ... in ...",
  "what is the difference between ... and ..."). Under the null, the members of family ``s`` in a
  group of ``A`` active accounts (seen in the last ``horizon``, a decayed count) are Poisson with
  mean ``lambda = dispersion * A * p_member * q(s)**2 / sum(q**2)``
  (:mod:`~distillguard.detectors._campaign_null`): ``q(s)`` is the family's share of templated
  requests in a benign reference (the coverage detector's package data by default) pooled with
  the deployment's own background traffic (a count-min sketch of the requests of accounts *not*
  concentrated on the family, so members do not raise their own base rate); ``p_member`` (0.05)
  is the share of benign accounts that ever become concentrated, measured with
  :func:`benign_member_rate` (0.035 on the generator's conversational users, 0.01 on
  chatterbot-corpus users); ``dispersion`` (4) covers benign users who reuse one phrasing far
  more than others (on the benign stress set in ``docs/detectors.md`` the largest family held
  2.9 times its Poisson mean). The campaign's *surprise* is the Chernoff bound on the Poisson
  tail, ``-log10 P(X >= m) >= (m ln(m / lambda) - m + lambda) / ln 10`` for ``m`` distinct
  members; the score ramps from ``surprise_low`` (6) to ``surprise_high`` (12) once
  ``m >= min_accounts`` (8), times ``max_score``.
* **Acting on every member.** Each member's requests, including ones outside the family (blended
  traffic), carry the current score of its campaign for as long as it is a member, so that the
  risk policy throttles, degrades or blocks all of them, not only the one whose request tipped it.

The score is capped at ``max_score`` (0.85: throttle and degrade with the default risk
policy; an operator who trusts it can raise it to 1 to block). Signals on the span: the members
``accounts``, the null's ``expected`` members, the ``surprise`` (log10) and the members' mean
``concentration`` on the family; never prompt text or account names.

**Anchor.** Provider disclosures of distillation campaigns (Feb 2026): ~24,000 accounts that
blended extraction with normal traffic and stayed under per-account thresholds, detected by
repeated templates, synchronised timing and shared payment/IP metadata; Kesarwani et al. 2018
(per colluding group); detection.md section 3 item 8. Target: a campaign of >= 20 accounts
flagged before it has been served 10% of its queries.

**Cost.** Per request: one account look-up, a ``window``-entry ``array.count`` and ``in`` (the
skeleton is shared with ``template_sweep``), and for a member, a read of its family's score. A
concentrated request also refreshes its family in each group: a ``max_members``-entry
``array.index``/``min`` and one pass counting live members (C-level, ~1 us at 64 members).
Nothing grows with history. Memory: at most ``max_accounts`` accounts (~600 bytes each at the
default window of 8; group keys are interned and shared), ``max_families`` (group, family)
records (~1.2 KB each at 64 members) and ``max_groups`` groups (~100 bytes each), all LRU with
counted evictions; a member past the cap displaces the least recently seen member (counted);
a 32 KB count-min sketch of background family counts.

**Limits.** Only template families are shared-feature keys today: campaigns that share a
*coverage partition* (each account replays a different slice of a natural corpus), random-word
queries, or only a *timing cadence* are not grouped here (the offline ``distillguard replay``
campaign grouping links cadences). With the default whole-skeleton families, templates wrapped
around natural text are missed (see ``edge``). An account needs ``recur`` (2) requests of the
family before it counts: a campaign rotating evenly over N accounts is served at least N
queries first (100 accounts x 10 queries: flagged after 138 of 1,000 in the benchmark). Many
accounts legitimately sharing one fixed template whose slots are only rare words (names,
numbers) look like a campaign; the score cap keeps them from being blocked on this evidence
alone. A campaign whose accounts also rotate templates, or that spreads over more than
``max_families`` live families between two of its requests, evades it. Like the other
detectors it is lock-free: two threads racing on one family record can at worst miscount a
member once.

**Several replicas.** Each account's recent requests (its family and text keys) are shared
through the limit storage like the per-client detectors' state (``shares_state``): an account is
concentrated on a family as soon as its whole stream says so, whichever replica served it. The
family records are shared too (``shares_records``): once a request is scored, the guard sends
the records it joined to the storage (a sorted set per group and family: each member's latest
visit, the members of the last ``horizon``, at most ``max_members``; one script call per record,
all of a request's calls in one pipelined round trip) and the replica takes the members the
others served, from its next request on. The active-account counts and the background sketch
stay per process. Behind a round-robin balancer each replica sees every account of a group;
behind a sticky one (by client address) only its share, so a replica whose record holds members
it never served scales its count of the group's active accounts by members / its own members (a
third of them each, on three sticky replicas: x3), and the null expects as many members as one
replica serving everything would.
Three replicas taking turns flag a 10-account template campaign at its 20th request, one
replica at its 18th, and three replicas with everything per process at their 52nd (32nd with
the records per process; ``tests/redis/test_shared_detector_state.py``). A request scored
twice after a conflicting write counts its family in the background sketch twice.
"""

from __future__ import annotations

import math
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence
from itertools import compress
from typing import Any

from ..limiting.effects import JoinRecord
from ._base import check_range, ramp
from ._campaign_groups import ActiveAccounts, group_keys, network_prefix
from ._campaign_null import (
    EDGE,
    NO_FAMILIES,
    BenignNull,
    benign_member_rate,
    concentrated,
    family_key,
    family_keys,
)
from ._protocol import DetectorResult, Observation
from ._state import LRUStates
from ._text import features

__all__ = ["EDGE", "CampaignDetector", "benign_member_rate", "family_key", "family_keys", "network_prefix"]

_LN10 = math.log(10.0)
_OUTBOX = 256  # family visits kept for the next exchange with the other replicas
_EMPTY = DetectorResult("campaign", 0.0)


class _Window:
    """An account's recent text requests (shared across replicas with the limit storage)."""

    __slots__ = ("families", "n", "pos", "texts")

    def __init__(self, window: int, kinds: int) -> None:
        self.families = array("I", bytes(4 * kinds * window))
        self.texts = array("I", bytes(4 * window))
        self.n = 0
        self.pos = 0


class _Account:
    """What this process knows of an account: its groups and memberships (per process, as the
    family records they name)."""

    __slots__ = ("groups", "last", "member", "member_ts", "source")

    def __init__(self) -> None:
        self.last = -math.inf
        self.source = 0
        self.groups: tuple[str, ...] = ()
        self.member: tuple[str, ...] = ()
        self.member_ts = -math.inf


class _Family:
    __slots__ = ("accounts", "concentration", "expected", "ids", "last", "mine", "score", "seen", "surprise")

    def __init__(self, members: int) -> None:
        self.ids = array("I", bytes(4 * members))
        self.seen = array("d", [-math.inf]) * members
        self.mine = bytearray(members)  # 1: a member this replica served itself
        self.accounts = 0
        self.concentration = 0.0
        self.expected = 0.0
        self.surprise = 0.0
        self.score = 0.0
        self.last = -math.inf


class CampaignDetector:
    """Scores template families shared by many concentrated accounts of one group, and every
    member's requests (see the module docstring).

    Args:
        reference: benign prompts whose skeleton frequencies are the null's ``q(s)`` (the
            coverage detector's built-in sample when ``None``).
        p_member: the share of benign accounts that become concentrated on some family
            (measure it with :func:`benign_member_rate`).
        dispersion: the null's mean is multiplied by this (benign member counts are
            overdispersed: some users reuse a phrasing far more than others).
        window: how many recent text requests of an account are kept.
        recur: an account is concentrated on a family from this many requests of it.
        min_share: ... and when the family is at least this share of its recent requests.
        min_fixed: skeletons with fewer common words are not families.
        edge: words of the skeleton's head and tail families (0, the default: whole skeletons
            only; :data:`EDGE` (4) also groups templates wrapped around natural text, at the
            cost of flagging legitimate integrations that many accounts share, see the module
            docstring; measure ``p_member`` with the same ``edge``).
        horizon: seconds an account stays active in its groups and a member of its family.
        min_accounts: no campaign below this many distinct members.
        surprise_low: the surprise (-log10 of the null's tail) at which the score starts rising.
        surprise_high: the surprise at which it reaches ``max_score``.
        max_score: the highest score this detector gives.
        max_accounts: the cap on tracked accounts.
        max_families: the cap on tracked (group, family) records.
        max_members: the cap on members per family record.
        max_groups: the cap on tracked groups.
        sketch_width: counters per row of the background count-min sketch (a power of two).
        sketch_limit: the sketch halves its counters after this many counted requests.
    """

    name = "campaign"
    shares_state = True
    shares_records = True

    def __init__(
        self,
        *,
        reference: Iterable[str] | None = None,
        p_member: float = 0.05,
        dispersion: float = 4.0,
        window: int = 8,
        recur: int = 2,
        min_share: float = 0.5,
        min_fixed: int = 4,
        edge: int = 0,
        horizon: float = 86_400.0,
        min_accounts: int = 8,
        surprise_low: float = 6.0,
        surprise_high: float = 12.0,
        max_score: float = 0.85,
        max_accounts: int = 100_000,
        max_families: int = 4096,
        max_members: int = 64,
        max_groups: int = 10_000,
        sketch_width: int = 4096,
        sketch_limit: int = 1 << 20,
    ) -> None:
        check_range("dispersion", dispersion, 1.0, 1e6)
        check_range("window", window, 2, 256)
        check_range("recur", recur, 2, window)
        check_range("min_share", min_share, 0.0, 1.0)
        check_range("min_fixed", min_fixed, 1, 64)
        check_range("edge", edge, 0, 64)
        check_range("horizon", horizon, 1.0, 30 * 86_400.0)
        check_range("max_members", max_members, 2, 1024)
        check_range("min_accounts", min_accounts, 2, max_members)
        check_range("surprise_low", surprise_low, 0.0, 1e6)
        check_range("surprise_high", surprise_high, surprise_low + 1e-9, 1e6)
        check_range("max_score", max_score, 0.0, 1.0)
        check_range("max_families", max_families, 1, 10_000_000)
        check_range("max_groups", max_groups, 1, 10_000_000)
        if reference is None:
            from .coverage import load_reference

            reference = load_reference()
        self.null = BenignNull(
            reference,
            p_member=p_member,
            min_fixed=min_fixed,
            edge=edge,
            sketch_width=sketch_width,
            sketch_limit=sketch_limit,
        )
        self.p_member = p_member
        self.dispersion = dispersion
        self.window = window
        self.recur = recur
        self.min_share = min_share
        self.min_fixed = min_fixed
        self.edge = edge
        self.horizon = horizon
        self.min_accounts = min_accounts
        self.surprise_low = surprise_low
        self.surprise_high = surprise_high
        self.max_score = max_score
        self.max_members = max_members
        self.member_evictions = 0
        self._outbox: list[JoinRecord] = []
        self._exchanging = False  # a guard with a shared storage asks for the visits
        self.states: LRUStates[_Window] = LRUStates(lambda: _Window(window, 3 if edge else 1), max_accounts)
        self.accounts: LRUStates[_Account] = LRUStates(_Account, max_accounts)
        self.families: LRUStates[_Family] = LRUStates(lambda: _Family(max_members), max_families)
        self.active = ActiveAccounts(horizon, max_groups)
        self.groups = self.active.groups

    def _join(self, key: str, member: int, share: float, fam: int, now: float) -> _Family:
        """Refresh ``member`` in the family record ``key`` and rescore the campaign."""
        record = self.families.get(key)
        ids, seen = record.ids, record.seen
        cutoff = now - self.horizon
        if member in ids:
            slot = ids.index(member)
        else:
            oldest = min(seen)
            slot = seen.index(oldest)
            if oldest > cutoff:
                self.member_evictions += 1
            ids[slot] = member
        seen[slot] = now
        record.mine[slot] = 1
        record.last = max(record.last, now)
        if self._exchanging and len(self._outbox) < _OUTBOX:
            self._outbox.append(JoinRecord(key, str(member), now, self.horizon, self.max_members))
        self._rescore(record, key, fam, now)
        accounts = record.accounts
        record.concentration = (
            share
            if accounts <= 1
            else record.concentration + (share - record.concentration) / min(accounts, 16)
        )
        return record

    def _rescore(self, record: _Family, key: str, fam: int, now: float) -> _Family:
        """Count the live members of ``record`` and score its campaign against the null."""
        live = list(map((now - self.horizon).__lt__, record.seen))
        accounts = sum(live)
        record.accounts = accounts
        group = key[: key.rindex("#")]
        active = self.active.count(group, now)  # the accounts of the group this replica saw
        own = sum(compress(record.mine, live))
        if 0 < own < accounts:  # other replicas served members this one never saw: it sees a
            active *= accounts / own  # share of the group's accounts (all of them round robin)
        expected = max(active, float(accounts)) * self.null.rate(fam) * self.dispersion
        record.expected = expected
        if accounts < self.min_accounts or accounts <= expected:
            record.surprise = 0.0
            record.score = 0.0
            return record
        surprise = (accounts * math.log(accounts / expected) - accounts + expected) / _LN10
        record.surprise = surprise
        record.score = ramp(surprise, self.surprise_low, self.surprise_high) * self.max_score
        return record

    def forget(self, client_id: str) -> None:
        """Drop the recent window and the groups of ``client_id`` (a released account); the
        family records it joined keep its visits until they pass the horizon."""
        self.states.discard(client_id)
        self.accounts.discard(client_id)

    def shared_records(self) -> list[JoinRecord]:
        """The family records this detector joined since the last call, to share with the other
        replicas (see :func:`~distillguard.detectors._sharing.shares_records`)."""
        self._exchanging = True  # from now on, visits are kept for the exchange
        out, self._outbox = self._outbox, []
        return out

    def absorb_records(self, joins: Sequence[JoinRecord], answers: Sequence[Any]) -> None:
        """Take the members the shared storage holds for each joined family record (those
        that other replicas served), and rescore the records."""
        for join, members in zip(joins, answers, strict=True):
            if not isinstance(members, list):
                continue
            record = self.families.peek(join.key)
            if record is None:
                continue
            ids, seen = record.ids, record.seen
            for member_text, at in members:
                try:
                    member = int(member_text)
                except ValueError:
                    continue
                if not 0 < member <= 0xFFFFFFFF or not math.isfinite(at):
                    continue
                if member in ids:
                    slot = ids.index(member)
                    seen[slot] = max(seen[slot], at)
                else:
                    oldest = min(seen)
                    if at > oldest:
                        slot = seen.index(oldest)
                        ids[slot] = member
                        seen[slot] = at
                        record.mine[slot] = 0
            record.last = max(record.last, max(seen))
            self._rescore(record, join.key, int(join.key[-8:], 16), join.seen)

    def score(self, observation: Observation) -> DetectorResult:
        """Record the request in its account's window, refresh its campaign membership, and
        return the score of the strongest campaign the account is a member of."""
        query = observation.query
        if not query.is_text:
            return _EMPTY
        feats = features(query)
        now = observation.timestamp
        client_id = observation.identity.client_id
        account = self.accounts.get(client_id)
        recent = self.states.get(client_id)
        source = hash((observation.identity.tenant, observation.client_address, observation.user_agent))
        if source != account.source:
            account.source = source
            groups = group_keys(
                observation.identity.tenant, observation.client_address, observation.user_agent
            )
            fresh = groups if now - account.last > self.horizon else tuple(set(groups) - set(account.groups))
            account.groups = groups
            self.active.arrive(fresh, now)
        elif now - account.last > self.horizon:
            self.active.arrive(account.groups, now)
        account.last = max(account.last, now)
        text_key = feats.key or 1
        keys = NO_FAMILIES if text_key in recent.texts else family_keys(feats, self.min_fixed, self.edge)
        pos = recent.pos
        families = recent.families
        if self.edge:
            families[3 * pos], families[3 * pos + 1], families[3 * pos + 2] = keys
        else:
            families[pos] = keys[0]
        recent.texts[pos] = text_key
        recent.pos = (pos + 1) % self.window
        recent.n = n = recent.n + 1
        joined: list[tuple[int, float]] = []
        for fam in keys:
            if fam:
                share = concentrated(families, fam, n, self.window, self.recur, self.min_share)
                if share:
                    joined.append((fam, share))
                else:
                    self.null.count(fam)
        if joined and account.groups:
            lapsed = now - account.member_ts > self.horizon
            for fam, share in joined:
                suffix = f"#{fam:08x}"
                if lapsed or not any(key.endswith(suffix) for key in account.member):
                    # newly concentrated: its earlier requests of the family were counted as
                    # background; take them back so that members never raise their own base rate
                    self.null.uncount(fam, round(share * min(n, self.window)) - 1)
            member = zlib.crc32(client_id.encode("utf-8", "surrogatepass")) or 1
            records = []
            for fam, share in joined:
                for group in account.groups:
                    key = sys.intern(f"{group}#{fam:08x}")
                    records.append(key)
                    self._join(key, member, share, fam, now)
            account.member = tuple(records)
            account.member_ts = now
        elif not account.member or now - account.member_ts > self.horizon:
            return _EMPTY
        best: _Family | None = None
        for key in account.member:
            record = self.families.peek(key)
            if record is not None and record.score > 0.0 and (best is None or record.score > best.score):
                best = record
        if best is None or now - best.last > self.horizon:
            return _EMPTY
        signals = {
            "accounts": float(best.accounts),
            "expected": best.expected,
            "surprise": best.surprise,
            "concentration": best.concentration,
        }
        return DetectorResult(self.name, best.score, ("shared_template_family",), signals)

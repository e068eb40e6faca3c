"""One Redis round trip per request: a Lua script that checks and charges every window of a
request at once, and reports each window's remaining quota and reset time.

It keeps ``limits``' data layout, so the refund script and ``limits``' own readers see the same
counters: a moving window is a list of timestamps (newest first, trimmed to the limit, expiring
with the window) and a fixed window is a counter set to expire one window after its first hit.

It improves on charging window by window in three ways:

* **one round trip** instead of two or three per window;
* **all or nothing**: when one window refuses, none is charged, so a refused request never
  holds quota (no refund needed, no window of over-counting);
* **server time**: moving-window timestamps come from Redis ``TIME``, so replicas whose clocks
  disagree still share one exact window (``limits`` stamps entries with each client's clock);
* **less work on the server**: a moving window's count is the list's length when its oldest
  entry still counts (one read at the tail; a binary search over the list otherwise), and a
  charge trims the entries that have left the window, so an active client's list holds what
  still counts and its next check is one read (``limits``' readers count only entries within
  the window, so they see the same counts).

Given one more key and argument, it also reads the client's shared detector state in the same
round trip (as :data:`LOAD_STATE_LUA` does; :mod:`distillguard.detectors._sharing`).

The sliding window counter and Redis Cluster (whose keys sit in different hash slots) are
charged window by window through ``limits`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .plan import LimitCheck, LimitOutcome

__all__ = [
    "ACQUIRE_SLOT_LUA",
    "CHARGE_WINDOWS_LUA",
    "JOIN_RECORD_LUA",
    "LOAD_STATE_LUA",
    "RELEASE_SLOT_LUA",
    "RENEW_SLOT_LUA",
    "SAVE_STATE_LUA",
    "outcomes",
    "script_args",
    "scriptable",
]

CHARGE_WINDOWS_LUA = """
local t = redis.call('time')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local charge = ARGV[1] == '1'
local n = #KEYS
local state = nil
if (#ARGV - 1) % 4 == 1 then  -- a last key and argument: a detector state to read
  state = KEYS[n]
  n = n - 1
end
local fits, counts, starts = {}, {}, {}
local all = true
for i = 1, n do
  local b = 1 + (i - 1) * 4
  local kind, limit = ARGV[b + 1], tonumber(ARGV[b + 2])
  local expiry, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local count, start = 0, now
  if kind == 'm' then
    local size = redis.call('llen', KEYS[i])
    local oldest = tonumber(redis.call('lindex', KEYS[i], -1))
    if oldest and oldest > now - expiry then  -- nothing expired yet: the whole list counts
      count, start = size, oldest
    else
      local low, high, found = 0, size - 2, -1
      while low <= high do
        local mid = math.floor((low + high) / 2)
        local v = tonumber(redis.call('lindex', KEYS[i], mid))
        if v and v > now - expiry then found = mid; low = mid + 1 else high = mid - 1 end
      end
      if found >= 0 then
        count = found + 1
        start = tonumber(redis.call('lindex', KEYS[i], found))
      end
    end
  else
    count = tonumber(redis.call('get', KEYS[i]) or '0')
  end
  fits[i] = cost <= limit and count + cost <= limit
  if kind == 'm' and not fits[i] and cost > 1 and cost <= limit and count > limit - cost then
    -- room for `cost` comes when the entry `limit - cost` from the newest expires, not the oldest
    local v = tonumber(redis.call('lindex', KEYS[i], limit - cost))
    if v then start = v end
  end
  counts[i], starts[i] = count, start
  if not fits[i] then all = false end
end
local out = {}
for i = 1, n do
  local b = 1 + (i - 1) * 4
  local kind, limit = ARGV[b + 1], tonumber(ARGV[b + 2])
  local expiry, cost = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local count, reset = counts[i], 0
  if kind == 'm' then
    if all and charge and cost > 0 then
      local entries = {}
      for j = 1, cost do entries[j] = now end
      for j = 1, #entries, 5000 do
        redis.call('lpush', KEYS[i], unpack(entries, j, math.min(j + 4999, #entries)))
      end
      redis.call('ltrim', KEYS[i], 0, math.min(limit, count + cost) - 1)  -- and the expired
      redis.call('expire', KEYS[i], expiry)
      if count == 0 then starts[i] = now end
      count = count + cost
    end
    reset = (count > 0 and starts[i] or now) + expiry
  else
    if all and charge and cost > 0 then
      count = redis.call('incrby', KEYS[i], cost)
      if count == cost then redis.call('expire', KEYS[i], expiry) end
    end
    local ttl = redis.call('pttl', KEYS[i])
    if ttl < 0 then ttl = 0 end
    reset = now + ttl / 1000
  end
  out[i] = {fits[i] and 1 or 0, limit - count, tostring(reset)}
end
if state then
  local stamp = redis.call('hget', state, 'w')
  if not stamp or stamp == ARGV[#ARGV] then
    out[n + 1] = false
  else
    out[n + 1] = {stamp, redis.call('hget', state, 'd')}
  end
end
return out
"""

LOAD_STATE_LUA = """
local stamp = redis.call('hget', KEYS[1], 'w')
if not stamp or stamp == ARGV[1] then return false end
return {stamp, redis.call('hget', KEYS[1], 'd')}
"""
"""A client's detector state (``{stamp, data}``), or nothing when its stamp is ``ARGV[1]``: the
replica asking is up to date, and nothing travels."""

SAVE_STATE_LUA = """
local stored = redis.call('hget', KEYS[1], 'w')
if stored and stored ~= ARGV[4] then return {stored, redis.call('hget', KEYS[1], 'd')} end
redis.call('hset', KEYS[1], 'w', ARGV[1], 'd', ARGV[2])
redis.call('pexpire', KEYS[1], ARGV[3])
return 1
"""
"""Store a client's detector state with its stamp and time to live (milliseconds), unless the
stored stamp is no longer ``ARGV[4]`` (the one the replica read): another replica wrote in
between, and its state (``{stamp, data}``) is the answer instead."""

JOIN_RECORD_LUA = """
local seen = tonumber(ARGV[2])
local old = redis.call('zscore', KEYS[1], ARGV[1])
if not old or tonumber(old) < seen then redis.call('zadd', KEYS[1], ARGV[2], ARGV[1]) end
local latest = tonumber(redis.call('zrange', KEYS[1], -1, -1, 'withscores')[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', '(' .. (latest - tonumber(ARGV[3])))
local extra = redis.call('zcard', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then redis.call('zremrangebyrank', KEYS[1], 0, extra - 1) end
redis.call('pexpire', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
return redis.call('zrange', KEYS[1], 0, -1, 'withscores')
"""
"""A member's visit to a shared record (a sorted set of members scored with the time each was
last seen, unix seconds of the replicas' clocks, which record the visit): keep the later time
of member ``ARGV[1]`` and ``ARGV[2]``, drop the members not seen within ``ARGV[3]`` seconds of
the latest visit and all but the ``ARGV[4]`` most recent, let the record expire ``ARGV[3]``
seconds after this visit, and answer its members with their times."""

_NOW_MS = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

ACQUIRE_SLOT_LUA = (
    _NOW_MS
    + """
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('pexpire', KEYS[1], tonumber(ARGV[2]))
return 1
"""
)
"""Take a concurrency slot: drop the expired leases of the in-flight set ``KEYS[1]`` (scored
with their expiry, in milliseconds of Redis' clock), and unless ``ARGV[1]`` (the cap) are still
live, add the lease ``ARGV[3]`` for ``ARGV[2]`` milliseconds: 1, else 0."""

RENEW_SLOT_LUA = (
    _NOW_MS
    + """
if not redis.call('zscore', KEYS[1], ARGV[2]) then return 0 end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('pexpire', KEYS[1], tonumber(ARGV[1]))
return 1
"""
)
"""Extend the lease ``ARGV[2]`` of ``KEYS[1]`` to ``ARGV[1]`` milliseconds from now (only if it
is still there: an expired lease is not brought back)."""

RELEASE_SLOT_LUA = "return redis.call('zrem', KEYS[1], ARGV[1])"
"""Give a concurrency slot back: remove the lease ``ARGV[1]`` from ``KEYS[1]``."""


def scriptable(storage: Any, checks: Sequence[LimitCheck]) -> bool:
    """Whether ``checks`` can be charged with the script on ``storage``: a single-node Redis or
    Valkey, possibly behind Sentinel, or a Redis Cluster when every check's key starts with the
    same hash tag (one client's own windows: one slot); moving and fixed windows only."""
    if any(c.strategy not in ("moving-window", "fixed-window") for c in checks):
        return False
    mode = getattr(storage, "MODE", None)
    if mode is not None:  # limits.aio redis storages
        if mode == "CLUSTER":
            return _one_slot(checks) and hasattr(storage, "bridge")
        return mode in ("BASIC", "SENTINEL") and hasattr(storage, "bridge")
    name = type(storage).__name__
    if name == "RedisClusterStorage":
        return _one_slot(checks) and hasattr(storage, "prefixed_key")
    return name in ("RedisStorage", "RedisSentinelStorage") and hasattr(storage, "prefixed_key")


def _one_slot(checks: Sequence[LimitCheck]) -> bool:
    """Whether every check's key starts with one hash tag (``{...}``)."""
    if not checks:
        return False
    first = checks[0].key[0] if checks[0].key else ""
    return first.startswith("{") and first.endswith("}") and all(c.key[:1] == (first,) for c in checks)


def script_args(
    storage: Any, checks: Sequence[LimitCheck], charge: bool
) -> tuple[list[str], list[str | int]]:
    """The script's ``KEYS`` and ``ARGV`` for ``checks``."""
    prefix = storage.prefixed_key if hasattr(storage, "prefixed_key") else storage.bridge.prefixed_key
    keys = [prefix(c.item.key_for(*c.key)) for c in checks]
    args: list[str | int] = ["1" if charge else "0"]
    for c in checks:
        args.extend(
            ("m" if c.strategy == "moving-window" else "f", c.item.amount, c.item.get_expiry(), c.cost)
        )
    return keys, args


def outcomes(checks: Sequence[LimitCheck], replies: Sequence[Any], charge: bool) -> tuple[LimitOutcome, ...]:
    """The script's replies as outcomes (a reply past the windows' is the detector state's);
    when any window refuses, none was charged."""
    replies = replies[: len(checks)]
    all_fit = all(int(r[0]) == 1 for r in replies)
    return tuple(
        LimitOutcome(
            check=check,
            allowed=int(reply[0]) == 1,
            remaining=max(0, int(reply[1])),
            reset_at=float(reply[2]),
            charged=charge and all_fit,
        )
        for check, reply in zip(checks, replies, strict=True)
    )

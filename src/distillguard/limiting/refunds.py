"""Taking quota back from a window: the one thing ``limits`` has no API for.

Fixed-window and sliding-window-counter refunds decrement the counter (never below zero,
keeping its expiry); moving-window refunds remove the newest entries. On Redis both are one Lua
script; on the bounded memory storage they are table operations. Other storages cannot refund
(the caller counts it).
"""

from __future__ import annotations

from typing import Any

from .memory import AsyncBoundedMemoryStorage, BoundedMemoryStorage

__all__ = ["arefund", "refund"]

_REFUND_LUA = """
local amount = tonumber(ARGV[2])
if ARGV[1] == 'list' then
  local n = redis.call('llen', KEYS[1])
  if n == 0 then return 0 end
  if amount > n then amount = n end
  redis.call('lpop', KEYS[1], amount)
  return amount
end
local v = redis.call('get', KEYS[1])
if not v then return 0 end
local left = tonumber(v) - amount
if left < 0 then left = 0 end
redis.call('set', KEYS[1], left, 'KEEPTTL')
return tonumber(v) - left
"""


def _redis_key(storage: Any, strategy: str, key: str) -> str:
    if strategy == "sliding-window-counter":
        key = storage._current_window_key(key)
    return (
        str(storage.prefixed_key(key))
        if hasattr(storage, "prefixed_key")
        else storage.bridge.prefixed_key(key)
    )


def _done_without_io(
    storage: Any, memory: type[Any], strategy: str, key: str, expiry: int, amount: int
) -> bool:
    """Refund what needs no round trip: nothing to take back, or the bounded ``memory`` table.

    Returns ``False`` when the storage still has to be asked (then nothing changed).
    """
    if amount <= 0:
        return True
    if not isinstance(storage, memory):
        return False
    table = storage.table
    if strategy == "moving-window":
        table.pop_entries(key, amount)
    elif strategy == "sliding-window-counter":
        table.refund_sliding(key, expiry, amount)
    else:
        table.decr(key, amount)
    return True


def _script_call(
    storage: Any, connections: Any, strategy: str, key: str, amount: int
) -> tuple[Any, list[str], list[Any]]:
    """The refund script (registered once per storage through ``connections``), its keys and
    its arguments."""
    script = getattr(storage, "_dg_refund", None)
    if script is None:
        script = connections.get_connection().register_script(_REFUND_LUA)
        storage._dg_refund = script
    kind = "list" if strategy == "moving-window" else "counter"
    return script, [_redis_key(storage, strategy, key)], [kind, amount]


def refund(storage: Any, strategy: str, key: str, expiry: int, amount: int) -> bool:
    """Take ``amount`` back from the window ``key`` of a sync storage.

    Returns ``False`` when the storage has no way to do it (then nothing changed).
    """
    if _done_without_io(storage, BoundedMemoryStorage, strategy, key, expiry, amount):
        return True
    if not hasattr(storage, "get_connection") or not hasattr(storage, "prefixed_key"):
        return False
    script, keys, args = _script_call(storage, storage, strategy, key, amount)
    script(keys, args)
    return True


async def arefund(storage: Any, strategy: str, key: str, expiry: int, amount: int) -> bool:
    """Take ``amount`` back from the window ``key`` of an async storage (see :func:`refund`)."""
    if _done_without_io(storage, AsyncBoundedMemoryStorage, strategy, key, expiry, amount):
        return True
    bridge = getattr(storage, "bridge", None)
    if bridge is None or not hasattr(bridge, "get_connection"):
        return False
    script, keys, args = _script_call(storage, bridge, strategy, key, amount)
    try:
        await script(keys=keys, args=args)
    except bridge.base_exceptions as exc:
        from limits.errors import StorageError

        raise StorageError(exc) from exc
    return True

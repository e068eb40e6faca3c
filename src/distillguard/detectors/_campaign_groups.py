"""Groups of accounts for the campaign detector: which groups a request's account belongs to,
and how many accounts have been active in each group lately.

A group is a tenant (``t:`` + CRC-32 of the issuer), a /24 IPv4 or /48 IPv6 network prefix of the
client address (``n:`` + the prefix) or a user agent (``u:`` + CRC-32 of the header). Keys are
interned: every account of a group shares one string.
"""

from __future__ import annotations

import ipaddress
import math
import sys
import zlib
from collections.abc import Iterable

from ._state import LRUStates

__all__ = ["ActiveAccounts", "group_keys", "network_prefix"]


def network_prefix(address: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) prefix of ``address`` as text, or ``None`` when it is not an
    IP address (IPv4-mapped IPv6 addresses count as IPv4; a trailing port is ignored)."""
    if not address:
        return None
    if address.count(":") == 1 and "." in address:  # "203.0.113.7:51234"
        address = address.partition(":")[0]
    elif address.startswith("[") and "]:" in address:  # "[2001:db8::1]:51234"
        address = address[1 : address.index("]")]
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return str(ipaddress.IPv6Network((int(ip) >> 80 << 80, 48)))
        ip = ip.ipv4_mapped
    return str(ipaddress.IPv4Network((int(ip) >> 8 << 8, 24)))


def group_keys(tenant: str | None, address: str | None, agent: str | None) -> tuple[str, ...]:
    """The interned keys of the groups of an account with this tenant, address and user agent."""
    out = []
    if tenant:
        out.append(f"t:{zlib.crc32(tenant.encode('utf-8', 'surrogatepass')):08x}")
    prefix = network_prefix(address)
    if prefix:
        out.append(f"n:{prefix}")
    if agent:
        out.append(f"u:{zlib.crc32(agent.encode('utf-8', 'surrogatepass')):08x}")
    return tuple(map(sys.intern, out))


class _Group:
    __slots__ = ("active", "ts")

    def __init__(self) -> None:
        self.active = 0.0
        self.ts = 0.0


class ActiveAccounts:
    """A decayed count of the accounts that became active in each group: an arrival adds 1, and
    the count decays as ``exp(-elapsed / horizon)`` (about the arrivals of the last horizon).

    Args:
        horizon: seconds over which an arrival counts.
        max_groups: the cap on tracked groups (LRU, evictions counted in ``groups``).
    """

    __slots__ = ("groups", "horizon")

    def __init__(self, horizon: float, max_groups: int) -> None:
        self.horizon = horizon
        self.groups: LRUStates[_Group] = LRUStates(_Group, max_groups)

    def arrive(self, keys: Iterable[str], now: float) -> None:
        """Count an account that became active in the groups ``keys``."""
        for key in keys:
            group = self.groups.get(key)
            group.active = 1.0 + group.active * math.exp(-max(0.0, now - group.ts) / self.horizon)
            group.ts = max(group.ts, now)

    def count(self, key: str, now: float) -> float:
        """The decayed count of accounts active in group ``key`` at ``now`` (0 when unknown)."""
        group = self.groups.peek(key)
        if group is None:
            return 0.0
        return group.active * math.exp(-max(0.0, now - group.ts) / self.horizon)

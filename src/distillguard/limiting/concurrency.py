"""The concurrency cap: how many requests (streams included) one client has in flight.

A slot is taken when the guard admits a request and given back exactly once when the exchange
ends, whether the response completed, the client disconnected or the app raised (the adapters
end every exchange on every path).

* **In process** (:class:`ConcurrencyLimiter`, :class:`Slot`): with ``memory://``, with
  ``LimitConfig(concurrency_scope="process")``, and as the local fallback while a shared
  storage is down. The release is a plain in-process operation: nothing can lose it.
* **On the shared storage** (:class:`SharedSlot`): each admitted request adds a *lease* to its
  client's sorted set (:func:`slot_key`), scored with its expiry on Redis' clock; a script
  drops the expired leases, counts the live ones and adds the new one only under the cap, so
  the cap holds across replicas. The release removes the lease (the adapters run it on every
  path, shielded from cancellation); an answer that streams for longer than half the lease
  renews it; a release that never arrives (the replica died, the storage was down at that
  moment) is made good by the lease running out.
"""

from __future__ import annotations

import threading

from .storage import hash_tag

__all__ = ["ConcurrencyLimiter", "SharedSlot", "Slot", "slot_key"]


def slot_key(owner: str) -> str:
    """The storage key (before the storage's prefix) of ``owner``'s leases: behind its hash
    tag, in the slot of its windows on a Redis Cluster."""
    return f"distillguard-inflight/{hash_tag(owner)}"


class SharedSlot:
    """One admitted request's lease on the shared storage: its ``token`` in the set ``key``.
    ``renewed`` is when it was taken or last renewed (the guard's clock), ``released`` whether
    its release has been asked for."""

    __slots__ = ("key", "lease", "released", "renewed", "token")

    def __init__(self, key: str, token: str, lease: float, now: float) -> None:
        self.key = key
        self.token = token
        self.lease = lease
        self.renewed = now
        self.released = False

    def renewal_due(self, now: float) -> bool:
        """Whether half the lease has gone by since it was taken or last renewed."""
        return not self.released and now - self.renewed >= self.lease / 2


class Slot:
    """One admitted request's place; :meth:`release` is idempotent."""

    __slots__ = ("_key", "_owner", "released")

    def __init__(self, owner: ConcurrencyLimiter, key: str) -> None:
        self._owner = owner
        self._key = key
        self.released = False

    def release(self) -> None:
        """Give the place back (only the first call counts)."""
        if not self.released:
            self.released = True
            self._owner._release(self._key)


class ConcurrencyLimiter:
    """In-flight counts per key, thread-safe, never more than ``max_keys`` keys (a key with
    nothing in flight is dropped at once, so only clients with live requests take memory).

    Args:
        max_keys: the most clients tracked; past it new clients are refused (fail closed).
    """

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, cap: int) -> Slot | None:
        """A slot for ``key`` if it has fewer than ``cap`` in flight, else ``None``."""
        with self._lock:
            current = self._counts.get(key, 0)
            if current >= cap or (current == 0 and len(self._counts) >= self.max_keys):
                return None
            self._counts[key] = current + 1
        return Slot(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            current = self._counts.get(key, 0) - 1
            if current > 0:
                self._counts[key] = current
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        """How many requests ``key`` has in flight."""
        return self._counts.get(key, 0)

    @property
    def total(self) -> int:
        """Requests in flight over all clients."""
        return sum(self._counts.values())

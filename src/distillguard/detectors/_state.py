"""Bounded per-client detector state.

Every built-in detector keeps a small, fixed-size state object per client (ring buffers in
``array``/``bytearray``, bit rings in ``int``, a few floats) and reaches it through a
:class:`StateStore`. The in-memory store, :class:`LRUStates`, caps the number of tracked clients
and evicts the least recently seen ones (evictions are counted). Cost per request is a dict
``pop`` and a re-insertion (a plain ``dict`` keeps insertion order, and costs about 50 bytes less
per client and detector than an ``OrderedDict``): it does not grow with history.

With a shared limit storage (Redis), the guard also exchanges each client's states with the
storage before and after the detectors run (:mod:`distillguard.detectors._sharing`): the
``LRUStates`` stays the working copy.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from itertools import islice
from typing import Generic, Protocol, TypeVar

from ..errors import ConfigurationError

__all__ = ["LRUStates", "StateStore", "bit_ring_push", "deep_sizeof"]

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class StateStore(Protocol[S_co]):
    """**Protocol:** where a detector keeps one state object per client.

    ``get`` returns the client's state, creating it when the client is new. Implementations
    must bound their memory (a cap on clients, a TTL) and count what they drop.
    """

    def get(self, client_id: str) -> S_co:
        """The state of ``client_id`` (created on first use)."""
        ...

    def __len__(self) -> int:
        """How many clients are tracked."""
        ...

    @property
    def evictions(self) -> int:
        """How many client states were dropped to respect the cap."""
        ...


class LRUStates(Generic[S]):
    """An in-memory :class:`StateStore` holding at most ``max_clients`` states (LRU eviction).

    Args:
        factory: builds the state of a new client.
        max_clients: the cap on tracked clients.
    """

    __slots__ = ("_evictions", "_factory", "_listed", "_oldest", "_states", "max_clients")

    def __init__(self, factory: Callable[[], S], max_clients: int = 100_000) -> None:
        if max_clients < 1:
            raise ConfigurationError("max_clients must be at least 1")
        self._factory = factory
        self.max_clients = max_clients
        self._states: dict[str, S] = {}
        self._oldest: list[str] = []  # the next clients to evict, oldest last
        self._listed: set[str] = set()  # those of them not used since they were listed
        self._evictions = 0

    def get(self, client_id: str) -> S:
        """The state of ``client_id``, most recently used from now on.

        Lock-free: each ``dict`` operation is atomic under the GIL; a race between two threads
        can at worst drop one client's state (it starts afresh), never corrupt it.
        """
        states = self._states
        state = states.pop(client_id, None)
        if state is not None:
            states[client_id] = state  # re-inserted: a dict keeps insertion order
            if self._listed:
                self._listed.discard(client_id)  # used again: no longer among the oldest
            return state
        if len(states) >= self.max_clients:
            self._evict(states)
        state = states[client_id] = self._factory()
        return state

    def _evict(self, states: dict[str, S]) -> None:
        """Drop the least recently used client.

        Finding the first entry of a dict walks over the slots that re-insertions left at its
        front, so the oldest clients are listed in batches (1/64 of the cap) and evicted one at
        a time; a listed client used since is skipped (it is no longer among the oldest).
        """
        listed, oldest = self._listed, self._oldest
        for _ in range(2):
            while oldest:
                client_id = oldest.pop()
                if client_id in listed:
                    listed.discard(client_id)
                    if states.pop(client_id, None) is not None:
                        self._evictions += 1
                        return
            oldest.extend(islice(states, max(1, self.max_clients // 64)))
            oldest.reverse()
            listed.update(oldest)

    def fresh(self) -> S:
        """A new state, as a new client gets (not stored)."""
        return self._factory()

    def put(self, client_id: str, state: S) -> None:
        """Make ``state`` the state of ``client_id`` (most recently used; e.g. read from a
        shared storage)."""
        states = self._states
        if states.pop(client_id, None) is None and len(states) >= self.max_clients:
            self._evict(states)
        states[client_id] = state
        if self._listed:
            self._listed.discard(client_id)

    def discard(self, client_id: str) -> None:
        """Forget the state of ``client_id`` (if any)."""
        self._states.pop(client_id, None)

    def peek(self, client_id: str) -> S | None:
        """The state of ``client_id`` without creating it or changing its recency."""
        return self._states.get(client_id)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._states

    @property
    def evictions(self) -> int:
        """How many client states were evicted."""
        return self._evictions


def bit_ring_push(ring: int, bit: bool, width: int) -> int:
    """Push ``bit`` into an integer used as a ring of the last ``width`` booleans."""
    return ((ring << 1) | bit) & ((1 << width) - 1)


def deep_sizeof(obj: object, _seen: set[int] | None = None) -> int:
    """The memory held by ``obj`` and everything it references (``sys.getsizeof`` walk over
    slots, dicts, containers and arrays; shared singletons such as small ints count once)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, bytearray, array, int, float, bool)) or obj is None:
        return size
    if isinstance(obj, dict):
        return size + sum(deep_sizeof(k, seen) + deep_sizeof(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(deep_sizeof(v, seen) for v in obj)
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(obj, slot):
                size += deep_sizeof(getattr(obj, slot), seen)
    if hasattr(obj, "__dict__"):
        size += deep_sizeof(vars(obj), seen)
    return size

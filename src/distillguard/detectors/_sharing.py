"""Detector state shared across replicas through the limit storage (Redis or Valkey).

A client's requests spread over several replicas would otherwise give each replica's detectors a
fraction of the client's stream: a template sweep sent round-robin to four replicas shows each of
them a quarter of its variants. With a shared storage, the guard keeps each client's detector
state in one Redis hash as well as in memory:

1. before the detectors run, the guard asks for the client's state, sending the *stamp* of the
   version this replica last read or wrote; a Lua script answers nothing when the stored stamp is
   the same (the replica is up to date: nothing travels, nothing is decoded), else the stored
   state, which replaces this replica's;
2. after the detectors ran, the guard writes the client's state back with a new stamp and a
   time to live (``Policy.state_ttl``), if no other replica wrote it since (below).

The state is JSON, never pickle: a value read from the storage is data, checked slot by slot
against a fresh state of the same detector (type, array type code, size cap), and a detector
whose settings differ (another window, another threshold: a different *layout*) ignores what the
other wrote. The write is conditional on the stored stamp being the one the replica read: when
another replica served a request of the same client in between, the write answers that replica's
state instead, and the guard takes it and scores its request again (``distillguard.flow``), so
that requests served at the same moment lose no query.

A detector shares its state when its class says ``shares_state = True`` and its per-client
states are an :class:`~distillguard.detectors._state.LRUStates` (attribute ``states``) of
objects whose ``__slots__`` hold only ``None``, ``bool``, ``int``, ``float``, ``bytes``,
``bytearray`` or ``array.array`` values. Every built-in detector does. A detector that keeps
records across clients (the campaign detector's family members) shares them as well when its
class says ``shares_records = True`` (:func:`shares_records`).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import secrets
import sys
import zlib
from array import array
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from ._state import LRUStates

__all__ = ["MAX_STATE_BYTES", "StateShare", "decode_state", "encode_state", "shareable", "shares_records"]

logger = logging.getLogger("distillguard")

MAX_STATE_BYTES = 262_144
"""A client's encoded state larger than this is neither written nor read."""

_SIMPLE = (bool, int, float)


def shareable(detector: Any) -> bool:
    """Whether ``detector`` opts into shared state and keeps it in an ``LRUStates``."""
    return getattr(type(detector), "shares_state", False) is True and isinstance(
        getattr(detector, "states", None), LRUStates
    )


def shares_records(detector: Any) -> bool:
    """Whether ``detector`` shares records across clients: its class says
    ``shares_records = True`` and it has ``shared_records()`` (the
    :class:`~distillguard.limiting.effects.JoinRecord` visits made since the last call; the
    guard sends them once the request is scored) and ``absorb_records(joins, answers)`` (each
    record's members after its join, ``[(member, seen), ...]``, in the order of ``joins``)."""
    return (
        getattr(type(detector), "shares_records", False) is True
        and callable(getattr(detector, "shared_records", None))
        and callable(getattr(detector, "absorb_records", None))
    )


_SLOTS: dict[type, tuple[tuple[str, ...], Callable[[object], tuple[Any, ...]]]] = {}
_ARRAY_CODES = frozenset("bBhHiIlLqQfd")


def _plan(state: object) -> tuple[tuple[str, ...], Callable[[object], tuple[Any, ...]]]:
    """The slot names of ``state``'s class and its bases, and a getter of their values in one
    call (computed once per class)."""
    cls = type(state)
    plan = _SLOTS.get(cls)
    if plan is None:
        found: list[str] = []
        for base in reversed(cls.__mro__):
            slots = base.__dict__.get("__slots__", ())
            found.extend((slots,) if isinstance(slots, str) else slots)
        names = tuple(found)
        if len(names) == 1:
            name = names[0]
            getter: Callable[[object], tuple[Any, ...]] = lambda obj: (getattr(obj, name),)  # noqa: E731
        else:
            getter = attrgetter(*names) if names else lambda obj: ()
        plan = _SLOTS[cls] = (names, getter)
    return plan


def _slots(state: object) -> tuple[str, ...]:
    return _plan(state)[0]


def _text(raw: Any) -> str:
    """Base64 of a bytes-like object (an ``array`` included)."""
    return b2a_base64(raw, newline=False).decode("ascii")


def _raw(text: Any) -> bytes:
    """The bytes of strict base64 ``text``, or raise ``ValueError``."""
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    if _STRICT:
        return a2b_base64(text, strict_mode=True)  # type: ignore[call-arg,unused-ignore]
    return base64.b64decode(text, validate=True)


_STRICT = sys.version_info >= (3, 11)


def encode_state(state: object) -> list[Any]:
    """The JSON-ready values of ``state``'s slots, in slot order.

    Raises:
        TypeError: when a slot holds a value that cannot be shared.
        AttributeError: when a slot is unset.
    """
    getter = _plan(state)[1]
    out: list[Any] = []
    append = out.append
    for value in getter(state):
        kind = type(value)
        if value is None or kind is int or kind is float or kind is bool:
            append(value)
        elif kind is bytearray or kind is bytes:
            append(["b", _text(value)])
        elif kind is array:
            append(["a", value.typecode, _text(value)])
        else:
            raise TypeError(f"a slot of {type(state).__name__} holds a {kind.__name__}, which is not shared")
    return out


def _decode_value(fresh: object, value: Any) -> object:
    """``value`` (from JSON) as the type of the fresh state's slot value, or raise ``ValueError``."""
    kind = type(fresh)
    if kind is int or kind is float or kind is bool:
        if type(value) is not kind:  # exactly the same type
            raise ValueError("another type")
        return value
    if kind is array or fresh is None:  # an array slot (``None`` until first used)
        if value is None:
            return None
        if not (type(value) is list and len(value) == 3 and value[0] == "a"):
            raise ValueError("not an array")
        code = value[1]
        if code not in _ARRAY_CODES or (kind is array and code != fresh.typecode):  # type: ignore[attr-defined]
            raise ValueError("another array type")
        out = array(code)
        out.frombytes(_raw(value[2]))  # ValueError on a partial item
        return out
    if kind is bytes or kind is bytearray:
        if not (type(value) is list and len(value) == 2 and value[0] == "b"):
            raise ValueError("not bytes")
        raw = _raw(value[1])
        return raw if kind is bytes else bytearray(raw)
    raise ValueError(f"a slot of type {kind.__name__} is not shared")


def decode_state(fresh: object, values: Any) -> object:
    """``fresh`` (a new state of the detector) filled with ``values`` (from :func:`encode_state`).

    An immutable decoded value equal to the fresh one keeps the fresh object (a shared empty
    ring stays the shared one).

    Raises:
        ValueError: when ``values`` does not fit the state's slots.
    """
    names, getter = _plan(fresh)
    if type(values) is not list or len(values) != len(names):
        raise ValueError("another layout")
    for name, current, value in zip(names, getter(fresh), values, strict=True):
        decoded = _decode_value(current, value)
        if type(decoded) is type(current) and type(current) in (array, bytes) and decoded == current:
            continue  # possibly a shared, never written value: keep it
        setattr(fresh, name, decoded)
    return fresh


def _layout(detector: Any, fresh: object) -> int:
    """A number that differs when two detectors' states cannot be exchanged: the state's class
    and slots, and the detector's settings (its public numbers, strings and booleans)."""
    settings = sorted(
        (k, v)
        for k, v in vars(detector).items()
        if not k.startswith("_") and k != "max_clients" and type(v) in (*_SIMPLE, str)
    )
    text = json.dumps([detector.name, type(fresh).__qualname__, _slots(fresh), settings])
    return zlib.crc32(text.encode())


class StateShare:
    """The per-client states of the sharing detectors, exchanged with the storage (see the module
    docstring).

    Args:
        detectors: the guard's detectors; those that are :func:`shareable` take part.
        ttl: seconds a stored state lives after its last write.
        max_clients: the cap on clients whose stamp this replica remembers.
        tag: the client's Redis Cluster hash tag, put in its state's key (``None``: not a
            cluster).
    """

    def __init__(
        self,
        detectors: tuple[Any, ...],
        ttl: float,
        max_clients: int = 100_000,
        tag: Callable[[str], str] | None = None,
    ) -> None:
        self.ttl_ms = max(1, int(ttl * 1000))
        self._tag = tag
        self._members: list[tuple[str, Any, int]] = []
        for detector in detectors:
            if not shareable(detector):
                continue
            fresh = detector.states.fresh()
            try:
                encode_state(fresh)
            except (TypeError, AttributeError):
                logger.warning(
                    "distillguard: detector %r keeps a state that cannot be shared; it stays per process",
                    detector.name,
                )
                continue
            self._members.append((detector.name, detector, _layout(detector, fresh)))
        self._known: LRUStates[list[str]] = LRUStates(lambda: [""], max_clients)
        self._replica = secrets.token_hex(6)
        self._writes = itertools.count(1)
        self.loaded = 0
        """States read from the storage (written by another replica)."""
        self.rejected = 0
        """Stored states, or detectors' parts of them, that did not fit (ignored)."""
        self.saved = 0
        """States written."""
        self.failed = 0
        """Reads and writes the storage did not answer (the state stayed per process)."""
        self.oversized = 0
        """States too large to write (kept per process)."""
        self.retried = 0
        """Requests scored again because another replica wrote the client's state in between."""
        self.records = 0
        """Visits to records shared across clients (a campaign's family records) sent to the
        storage."""
        self.records_failed = 0
        """Exchanges of such visits that failed (the storage, or the detector)."""

    def __bool__(self) -> bool:
        return bool(self._members)

    def __contains__(self, detector: object) -> bool:
        """Whether ``detector`` (the instance) shares its state here."""
        return any(member is detector for _, member, _ in self._members)

    @property
    def names(self) -> tuple[str, ...]:
        """The detectors whose state is shared."""
        return tuple(name for name, _, _ in self._members)

    def key(self, client_id: str) -> str:
        """The storage key of ``client_id``'s states (before the storage's prefix); behind the
        client's hash tag on a Redis Cluster (``tag``), in the slot of its windows."""
        if self._tag is not None:
            return f"distillguard-state/{self._tag(client_id)}"
        escaped = client_id.replace("%", "%25").replace("/", "%2F")
        return f"distillguard-state/{escaped}"

    def known(self, client_id: str) -> str:
        """The stamp of the version this replica last read or wrote for ``client_id``."""
        holder = self._known.peek(client_id)
        return holder[0] if holder is not None else ""

    def forget(self, client_id: str) -> None:
        """Forget the stamp of ``client_id``'s stored state (a released client: the next read
        takes whatever is stored)."""
        self._known.discard(client_id)

    def install(self, client_id: str, reply: object, *, replace: bool = False) -> None:
        """Take the stored state of ``client_id`` (the storage's reply: ``None`` when this
        replica's own is current, else ``(stamp, data)``). With ``replace``, a sharing detector
        that has no part in it forgets its own state of the client too (the stored state is
        the whole of the client's stream)."""
        if not isinstance(reply, (list, tuple)) or len(reply) != 2:
            return
        stamp, data = reply
        if isinstance(stamp, bytes):
            stamp = stamp.decode("ascii", "replace")
        if not isinstance(stamp, str):
            self.rejected += 1
            return
        self._known.get(client_id)[0] = stamp  # seen: even one that does not fit is overwritten next
        if not isinstance(data, (bytes, str)) or len(data) > MAX_STATE_BYTES:
            self.rejected += 1
            return
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            doc = None
        if not isinstance(doc, dict):
            self.rejected += 1
            return
        for name, detector, layout in self._members:
            part = doc.get(name)
            if part is None:
                if replace:
                    detector.states.discard(client_id)
                continue
            try:
                if not (isinstance(part, list) and len(part) == 2 and part[0] == layout):
                    raise ValueError("another layout")
                state = decode_state(detector.states.fresh(), part[1])
            except (ValueError, TypeError, OverflowError):  # binascii.Error is a ValueError
                self.rejected += 1
                continue
            detector.states.put(client_id, state)
        self.loaded += 1

    def export(self, client_id: str) -> tuple[str, str] | None:
        """``(stamp, data)`` to write for ``client_id`` (``None`` when no detector holds a state
        of it, or when the state is too large)."""
        doc: dict[str, Any] = {}
        for name, detector, layout in self._members:
            state = detector.states.peek(client_id)
            if state is not None:
                try:
                    doc[name] = [layout, encode_state(state)]
                except (TypeError, AttributeError):  # a slot changed type: this one stays local
                    self.rejected += 1
        if not doc:
            return None
        data = json.dumps(doc, separators=(",", ":"))
        if len(data) > MAX_STATE_BYTES:
            self.oversized += 1
            return None
        stamp = f"{self._replica}.{next(self._writes)}"
        self._known.get(client_id)[0] = stamp
        return stamp, data

    def count(self, done: bool, write: bool) -> None:
        """Count a read or write the storage answered (``done``) or not."""
        if not done:
            self.failed += 1
        elif write:
            self.saved += 1

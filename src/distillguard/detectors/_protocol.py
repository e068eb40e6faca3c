"""Detector Protocols and the values they exchange."""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..identity import Identity
from ..query import Query, finite_float

__all__ = [
    "AsyncDetector",
    "Detector",
    "DetectorResult",
    "Observation",
    "checked_result",
    "forget_client",
    "is_async_detector",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One request, as a detector sees it.

    Attributes:
        identity: the verified client. Key per-client state by its ``client_id``: with several
            accepted issuers it is the tenant and the ``sub`` joined by ``"\\x1f"``, so that the
            same ``sub`` of two issuers is two clients.
        timestamp: when the request arrived (unix seconds).
        method: the HTTP method.
        route: the request path.
        query: the parsed request (prompt text included: keep it in memory, never export it).
        client_address: the peer address as the server reported it (after any proxy fix).
        user_agent: the ``User-Agent`` header, if any.
    """

    identity: Identity
    timestamp: float
    method: str
    route: str
    query: Query
    client_address: str | None = None
    user_agent: str | None = None

    @property
    def client_id(self) -> str:
        """Shortcut for ``identity.client_id``."""
        return self.identity.client_id


@dataclass(frozen=True, slots=True)
class DetectorResult:
    """A detector's verdict on one request.

    Attributes:
        detector: the detector's name.
        score: 0.0 (benign) to 1.0 (extraction-like).
        reasons: short machine-readable reasons (no prompt text).
        signals: numeric measurements behind the score, recorded on the span.
    """

    detector: str
    score: float
    reasons: tuple[str, ...] = ()
    signals: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            object.__setattr__(self, "score", min(1.0, max(0.0, float(self.score))))


_TOKEN = re.compile(r"[A-Za-z0-9_.:=+-]{1,64}")
"""What a plugin's reasons and signal names may be: short machine-readable tokens (never text
that could quote the request, which would reach the span)."""


def checked_result(result: object, name: str) -> DetectorResult | None:
    """``result`` of the detector configured as ``name``, checked: ``None`` when it is not a
    :class:`DetectorResult` with a real score, a tuple of string reasons and a mapping of
    string names to finite numbers (the pipeline then treats it as a detector error). It
    carries the configured ``name`` whatever it says (a plugin cannot pose as another detector
    or create metric series), and reasons and signal names that are not short tokens are
    replaced by ``invalid`` (they go on the span).

    Built-in detectors are not checked: their results are well-formed by construction."""
    if (  # the common case, a bare score: nothing else to check
        type(result) is DetectorResult
        and result.detector == name
        and result.reasons == ()
        and type(result.signals) is dict
        and not result.signals
    ):
        score = result.score
        if type(score) is float and score == score:
            return result
    if not isinstance(result, DetectorResult):
        return None
    score, reasons, signals = result.score, result.reasons, result.signals
    if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
        return None
    if not isinstance(reasons, tuple) or not all(isinstance(r, str) for r in reasons):
        return None
    if not isinstance(signals, Mapping):
        return None
    clean: dict[str, float] = {}
    for key, value in signals.items():
        number = finite_float(value)
        if not isinstance(key, str) or number is None:
            return None
        clean[key if _TOKEN.fullmatch(key) else "invalid"] = number
    reasons = tuple(r if _TOKEN.fullmatch(r) else "invalid" for r in reasons)
    return DetectorResult(name, float(score), reasons, clean)


@runtime_checkable
class Detector(Protocol):
    """**Protocol:** scores a client's query stream; called once per admitted request.

    ``score`` must be cheap and must not block: it runs inline on the request path. Set a class
    attribute ``blocking = True`` to have the ASGI adapter run it in a worker thread.

    A detector that keeps per-client state can define ``forget(client_id: str) -> None``, which
    :meth:`~distillguard.Guard.release` calls to drop what it holds on a released client (a
    detector whose state is an ``LRUStates`` in its ``states`` attribute needs none: see
    :func:`forget_client`).
    """

    name: str

    def score(self, observation: Observation) -> DetectorResult:
        """Score one request in the context of its client's history."""
        ...


@runtime_checkable
class AsyncDetector(Protocol):
    """**Protocol:** like :class:`Detector`, for detectors that do I/O (ASGI only)."""

    name: str

    async def score(self, observation: Observation) -> DetectorResult:
        """Score one request in the context of its client's history."""
        ...


def is_async_detector(detector: object) -> bool:
    """Whether ``detector.score`` is a coroutine function (partials unwrapped)."""
    fn = getattr(detector, "score", None)
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = getattr(fn, "__call__", None)  # noqa: B004  (a callable object with an async __call__)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def forget_client(detector: object, client_id: str) -> bool:
    """Make ``detector`` forget ``client_id``: its ``forget(client_id)`` if it has one, else
    ``states.discard(client_id)`` when it keeps its per-client states in ``states``. Whether it
    could; an error of the detector's own is its own (the release goes on: ``False``)."""
    forget = getattr(detector, "forget", None)
    if not callable(forget):
        states = getattr(detector, "states", None)
        forget = getattr(states, "discard", None)
        if not callable(forget):
            return False
    try:
        forget(client_id)
    except Exception:
        return False
    return True

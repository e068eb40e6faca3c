"""Reading trace context and routes from ASGI scopes and WSGI environs (for the adapters)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import propagate
from opentelemetry.propagators.textmap import Getter, TextMapPropagator

__all__ = ["ASGI_GETTER", "EXCHANGE_ENVIRON_KEY", "WSGI_GETTER", "asgi_route", "carries_context"]

EXCHANGE_ENVIRON_KEY = "distillguard.exchange"
"""Where the WSGI adapter leaves the request's exchange (read by the Flask span hook)."""


class _ASGIGetter(Getter[MutableMapping[str, Any]]):
    """Reads request headers from an ASGI ``scope``."""

    def get(self, carrier: MutableMapping[str, Any], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [v.decode("latin-1") for k, v in carrier.get("headers", ()) if k == name]
        return values or None

    def keys(self, carrier: MutableMapping[str, Any]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier.get("headers", ())]


class _WSGIGetter(Getter[Mapping[str, Any]]):
    """Reads request headers from a WSGI ``environ``."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


ASGI_GETTER = _ASGIGetter()
WSGI_GETTER = _WSGIGetter()


class _Fields:
    """The header names the global propagator reads, as ASGI names and as WSGI environ keys
    (recomputed when the global propagator changes)."""

    __slots__ = ("asgi", "propagator", "wsgi")

    def __init__(self, propagator: TextMapPropagator | None) -> None:
        self.propagator = propagator
        fields = set(propagator.fields) if propagator is not None else set()
        self.asgi = frozenset(f.lower().encode("latin-1") for f in fields)
        self.wsgi = tuple("HTTP_" + f.upper().replace("-", "_") for f in fields)


_fields = _Fields(None)


def carries_context(carrier: Any, getter: Getter[Any]) -> bool:
    """Whether ``carrier`` has a header the global propagator reads (``traceparent``,
    ``tracestate``, ``baggage`` by default), i.e. whether extracting a context from it can find
    anything. ``True`` for other getters and for propagators that declare no fields."""
    global _fields
    propagator = propagate.get_global_textmap()
    fields = _fields
    if fields.propagator is not propagator:
        _fields = fields = _Fields(propagator)
    if getter is ASGI_GETTER:
        if not fields.asgi:
            return True
        names = fields.asgi
        return any(name in names for name, _ in carrier.get("headers", ()))
    if getter is WSGI_GETTER:
        return not fields.wsgi or any(key in carrier for key in fields.wsgi)
    return True


def asgi_route(scope: Mapping[str, Any]) -> str | None:
    """The matched route template (``/v1/models/{model}``) once Starlette/FastAPI routed the
    request (``scope["route"]``), or ``None``."""
    route = scope.get("route")
    if route is None:
        return None
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str) or not template:
        return None
    root: str = scope.get("root_path", "") or ""
    return root + template

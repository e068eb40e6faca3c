"""Reading trace context and routes from ASGI scopes and WSGI environs (for the adapters)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry.propagators.textmap import Getter

__all__ = ["ASGI_GETTER", "EXCHANGE_ENVIRON_KEY", "WSGI_GETTER", "asgi_route"]

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

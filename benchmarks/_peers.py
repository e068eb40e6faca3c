"""The peer stacks: what users assemble today from separate libraries (docs/benchmarks.md).

* Starlette: ``AuthenticationMiddleware`` with a backend verifying the HS256 JWT with PyJWT
  (audience and issuer checked), slowapi keyed by the JWT subject (memory storage), and the
  OpenTelemetry ASGI middleware; the endpoint puts a hash of the prompt on the server span.
* Flask: a PyJWT check in ``before_request``, Flask-Limiter keyed by the subject (memory
  storage), and the OpenTelemetry WSGI middleware; the same span attribute.

They need the ``bench`` extra (``pip install -e '.[bench]'``); :func:`available` says whether
the packages are there.
"""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

import jwt as pyjwt
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from . import _apps

_MODULES = (
    "slowapi",
    "flask_limiter",
    "opentelemetry.instrumentation.asgi",
    "opentelemetry.instrumentation.wsgi",
)


def available() -> bool:
    """Whether the peer libraries are installed."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in _MODULES)
    except ModuleNotFoundError:
        return False


def _claims(authorization: str | None) -> dict[str, Any]:
    if not authorization or not authorization.startswith("Bearer "):
        raise pyjwt.InvalidTokenError("no token")
    claims: dict[str, Any] = pyjwt.decode(
        authorization[7:],
        _apps.SECRET,
        algorithms=["HS256"],
        audience=_apps.AUDIENCE,
        issuer=_apps.ISSUER,
        options={"require": ["exp", "iat", "sub"]},
    )
    return claims


def _prompt_hash(data: Any) -> str:
    text = "\n".join(m.get("content", "") for m in data.get("messages", []) if isinstance(m, dict))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def starlette_peer(provider: TracerProvider) -> Any:
    """Starlette + AuthenticationMiddleware (PyJWT) + slowapi + OpenTelemetry ASGI middleware."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from starlette.applications import Starlette
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        SimpleUser,
    )
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
    from starlette.routing import Route

    class JWTBackend(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
            try:
                claims = _claims(conn.headers.get("authorization"))
            except pyjwt.PyJWTError as exc:
                raise AuthenticationError("invalid token") from exc
            return AuthCredentials(["authenticated"]), SimpleUser(claims["sub"])

    limiter = Limiter(key_func=lambda request: request.user.username, storage_uri="memory://")

    @limiter.limit(_apps.LIMITS)
    async def completions(request: Request) -> Response:
        data = await request.json()
        trace.get_current_span().set_attribute("app.prompt.hash", _prompt_hash(data))
        return Response(_apps.RESPONSE, media_type="application/json")

    app = Starlette(
        routes=[Route(_apps.PATH, completions, methods=["POST"])],
        middleware=[Middleware(AuthenticationMiddleware, backend=JWTBackend())],
    )
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return OpenTelemetryMiddleware(app, tracer_provider=provider)


def flask_peer(provider: TracerProvider) -> Any:
    """Flask + PyJWT in ``before_request`` + Flask-Limiter + OpenTelemetry WSGI middleware; the
    WSGI callable."""
    from flask import Flask, abort, g, request
    from flask_limiter import Limiter
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    app = Flask("peer")

    @app.before_request
    def authenticate() -> None:
        try:
            g.subject = _claims(request.headers.get("Authorization"))["sub"]
        except pyjwt.PyJWTError:
            abort(401)

    Limiter(lambda: g.subject, app=app, default_limits=[_apps.LIMITS], storage_uri="memory://")

    @app.post(_apps.PATH)
    def completions() -> Any:
        data = request.get_json()
        trace.get_current_span().set_attribute("app.prompt.hash", _prompt_hash(data))
        return app.response_class(_apps.RESPONSE, mimetype="application/json")

    return OpenTelemetryMiddleware(app.wsgi_app, tracer_provider=provider)

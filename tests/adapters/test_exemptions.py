"""CORS preflight exemption and the ASGI lifespan hook, through both adapters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from starlette.testclient import TestClient

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard
from tests.helpers import EchoASGIApp, EchoWSGIApp

PREFLIGHT = {"origin": "https://app.example", "access-control-request-method": "POST"}


def _clients(guard: Guard) -> list[tuple[str, Any, Any]]:
    asgi_app = EchoASGIApp()
    wsgi_app = EchoWSGIApp()
    asgi = TestClient(DistillGuardMiddleware(asgi_app, guard=guard))
    wsgi = httpx.Client(
        transport=httpx.WSGITransport(app=DistillGuardWSGIMiddleware(wsgi_app, guard=guard)),
        base_url="http://testserver",
    )
    return [("asgi", asgi, asgi_app), ("wsgi", wsgi, wsgi_app)]


def test_preflight_reaches_the_app_without_a_token(guard_factory: Callable[..., Guard]) -> None:
    """A CORS preflight (OPTIONS with Access-Control-Request-Method) is passed to the app unchecked."""
    for name, client, app in _clients(guard_factory()):
        response = client.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
        assert response.status_code == 200, name
        assert len(app.calls) == 1, name
        assert app.calls[0].decision is None, name


@pytest.mark.parametrize(
    "headers",
    [pytest.param({"origin": "https://app.example"}, id="options-without-request-method")],
)
def test_plain_options_is_guarded(guard_factory: Callable[..., Guard], headers: dict[str, str]) -> None:
    """An OPTIONS request that is not a preflight still needs a token."""
    for name, client, app in _clients(guard_factory()):
        response = client.request("OPTIONS", "/v1/chat/completions", headers=headers)
        assert response.status_code == 401, name
        assert app.calls == [], name


def test_preflight_exemption_can_be_turned_off(guard_factory: Callable[..., Guard]) -> None:
    """With exempt_preflight=False a preflight without a token gets 401."""
    for name, client, app in _clients(guard_factory(exempt_preflight=False)):
        response = client.request("OPTIONS", "/v1/chat/completions", headers=PREFLIGHT)
        assert response.status_code == 401, name
        assert app.calls == [], name


def test_lifespan_shutdown_closes_the_limiter(guard_factory: Callable[..., Guard]) -> None:
    """The app's lifespan runs unchanged and the limiter is closed once shutdown completes."""
    app = EchoASGIApp()
    middleware = DistillGuardMiddleware(app, guard=guard_factory())
    closed: list[bool] = []
    limiter = middleware._perform.limiter
    original = limiter.aclose

    async def recording_close() -> None:
        closed.append(True)
        await original()

    limiter.aclose = recording_close  # type: ignore[method-assign]
    sent: list[str] = []

    async def run() -> None:
        events = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, Any]:
            return next(events)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                assert closed == []

        await middleware({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    anyio.run(run)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed == [True]
    assert app.started and app.stopped

"""``Guard(websockets="authenticate")``: WebSocket handshakes are checked like requests without a
body (token, limits, penalty box), through a real uvicorn server and the ``websockets`` client;
a refused handshake gets the problem as an HTTP response, or a close with code 1008 from a
server without the ``websocket.http.response`` extension. The default passes them through."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import websockets.sync.client as websockets_sync
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus

from distillguard import ConfigurationError, DistillGuardMiddleware, Guard, LimitConfig
from tests.helpers import SUBJECT, guard_spans, make_token
from tests.servers import serve_in_thread

pytestmark = pytest.mark.timeout(30)


async def realtime(websocket: WebSocket) -> None:
    """Accept, say who the guard let in, echo one message, close."""
    await websocket.accept()
    decision = websocket.scope.get("state", {}).get("distillguard")
    await websocket.send_text(decision.identity.client_id if decision is not None else "unchecked")
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def app(guard: Guard) -> Any:
    starlette = Starlette(routes=[WebSocketRoute("/v1/realtime", realtime)])
    return DistillGuardMiddleware(starlette, guard=guard)


def connect(base: str, token: str | None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    url = base.replace("http://", "ws://") + "/v1/realtime"
    return websockets_sync.connect(url, additional_headers=headers, open_timeout=5)


def test_handshakes_are_authenticated_and_limited(
    guard_factory: Callable[..., Guard], span_exporter: Any
) -> None:
    """No token: the handshake is refused with 401 ``missing_token`` (problem+json); a valid
    token connects, and the app sees the verified identity; past the limit: 429 with
    ``Retry-After``; one guard span per handshake."""
    guard = guard_factory(websockets="authenticate", limits=LimitConfig(default="1/minute"))
    with serve_in_thread(app(guard)) as base:
        with pytest.raises(InvalidStatus) as refused:
            connect(base, None)
        response = refused.value.response
        assert response.status_code == 401
        assert json.loads(response.body)["code"] == "missing_token"
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'

        with connect(base, make_token()) as ws:
            assert ws.recv() == SUBJECT
            ws.send("hello")
            assert ws.recv() == "hello"

        with pytest.raises(InvalidStatus) as limited:
            connect(base, make_token())
        assert limited.value.response.status_code == 429
        assert int(limited.value.response.headers["retry-after"]) >= 1
    decisions = [s.attributes["distillguard.decision"] for s in guard_spans(span_exporter)]
    assert sorted(decisions) == ["allow", "rate_limited", "unauthenticated"]


def test_default_passes_websockets_through(guard_factory: Callable[..., Guard]) -> None:
    """By default the guard leaves WebSocket connections to the app."""
    with serve_in_thread(app(guard_factory())) as base, connect(base, None) as ws:
        assert ws.recv() == "unchecked"


@pytest.mark.anyio
async def test_without_the_http_response_extension_a_refusal_closes_with_1008(
    guard_factory: Callable[..., Guard],
) -> None:
    """A server that cannot answer a handshake with an HTTP response gets a close with code
    1008 (policy violation); the app is never called."""
    called: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    middleware = DistillGuardMiddleware(inner, guard=guard_factory(websockets="authenticate"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "subprotocols": []}
    await middleware(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and called == []


def test_websockets_setting_is_checked(guard_factory: Callable[..., Guard]) -> None:
    with pytest.raises(ConfigurationError):
        guard_factory(websockets="deny")
    for prefix in ("", "bearer token.", "bearer,"):
        with pytest.raises(ConfigurationError):
            guard_factory(websockets="authenticate", websocket_token_protocol=prefix)


async def subprotocol_echo(websocket: WebSocket) -> None:
    """Accept with ``realtime``; say who the guard let in and what the app was offered."""
    await websocket.accept(subprotocol="realtime")
    decision = websocket.scope.get("state", {}).get("distillguard")
    await websocket.send_text(decision.identity.client_id)
    offered = dict(websocket.scope["headers"]).get(b"sec-websocket-protocol", b"").decode()
    await websocket.send_text(json.dumps([websocket.scope["subprotocols"], offered]))
    await websocket.close()


def test_a_browser_token_in_the_subprotocols_authenticates_the_handshake(
    guard_factory: Callable[..., Guard],
) -> None:
    """With ``websocket_token_protocol="bearer."``, a browser's ``new WebSocket(url,
    ["realtime", "bearer." + token])`` connects as the token's client; the app sees only
    ``realtime`` offered (the token never reaches it) and picks it. A bad token there is
    refused with 401 ``invalid_token``; without the setting, the same handshake has no token."""
    starlette = Starlette(routes=[WebSocketRoute("/v1/realtime", subprotocol_echo)])
    url_of = lambda base: base.replace("http://", "ws://") + "/v1/realtime"  # noqa: E731

    def offer(base: str, token: str) -> Any:
        return websockets_sync.connect(
            url_of(base), subprotocols=["realtime", "bearer." + token], open_timeout=5
        )

    guard = guard_factory(websockets="authenticate", websocket_token_protocol="bearer.")
    with serve_in_thread(DistillGuardMiddleware(starlette, guard=guard)) as base:
        with offer(base, make_token()) as ws:
            assert ws.subprotocol == "realtime"
            assert ws.recv() == SUBJECT
            assert json.loads(ws.recv()) == [["realtime"], "realtime"]
        with pytest.raises(InvalidStatus) as refused:
            offer(base, make_token(key=b"another-secret-of-at-least-32-bytes!"))
        assert refused.value.response.status_code == 401
        assert json.loads(refused.value.response.body)["code"] == "invalid_token"
    plain = guard_factory(websockets="authenticate")
    with serve_in_thread(DistillGuardMiddleware(starlette, guard=plain)) as base:
        with pytest.raises(InvalidStatus) as missing:
            offer(base, make_token())
        assert json.loads(missing.value.response.body)["code"] == "missing_token"

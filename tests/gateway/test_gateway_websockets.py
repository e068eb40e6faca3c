"""WebSockets through the guarded gateway, over real connections: a realtime model server
(uvicorn) behind the gateway (uvicorn), called with the ``websockets`` client. Messages pass
both ways unchanged, close codes and reasons travel to the other side, the guard checks every
handshake before the upstream hears of it, and an unreachable upstream refuses the handshake
with a problem (never a hang)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.sync.client as websockets_sync
from websockets.exceptions import ConnectionClosed, InvalidStatus

from distillguard import Guard, LimitConfig
from distillguard.gateway import _sendable, gateway_app
from tests.helpers import jwt_config, make_token
from tests.servers import free_port, serve_in_thread

pytestmark = pytest.mark.timeout(60)


class RealtimeServer:
    """A stand-in realtime model server: ``/v1/realtime`` echoes every message (text as text,
    bytes as bytes) until the client leaves; ``/v1/bye`` closes with 4001 ``"bye"`` after its
    first message; ``/v1/refuse`` refuses the upgrade. Records each connection's headers,
    offered subprotocols and how the client left."""

    def __init__(self) -> None:
        self.connections: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        record: dict[str, Any] = {
            "path": scope["path"],
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "subprotocols": list(scope.get("subprotocols", [])),
            "left": None,
        }
        self.connections.append(record)
        await receive()  # websocket.connect
        if scope["path"] == "/v1/refuse":  # a close before accept: uvicorn answers 403
            await send({"type": "websocket.close", "code": 1008})
            return
        offered = record["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record["left"] = message.get("code")
                return
            if scope["path"] == "/v1/bye":
                await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
                return
            reply = {"type": "websocket.send"}
            if message.get("text") is not None:
                reply["text"] = message["text"]
            else:
                reply["bytes"] = message["bytes"]
            await send(reply)


@pytest.fixture
def realtime() -> Iterator[tuple[RealtimeServer, str]]:
    server = RealtimeServer()
    with serve_in_thread(server) as url:
        yield server, url


def serve_gateway(upstream: str, **guard_options: Any) -> Any:
    guard_options.setdefault("websockets", "authenticate")
    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="100/minute"), **guard_options)
    return serve_in_thread(gateway_app(upstream, guard=guard), lifespan="on")


def connect(base: str, path: str, token: str | None, **options: Any) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    url = base.replace("http://", "ws://") + path
    return websockets_sync.connect(url, additional_headers=headers, open_timeout=5, **options)


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_messages_pass_both_ways_unchanged(realtime: tuple[RealtimeServer, str]) -> None:
    """Text and binary messages reach the model server and come back as sent; the upstream
    chose the subprotocol; the guard's bearer token is not forwarded; the client's leaving
    (code 1000) reaches the upstream."""
    server, upstream = realtime
    token = make_token(sub="alice")
    with serve_gateway(upstream) as url:
        with connect(url, "/v1/realtime", token, subprotocols=["realtime-v1"]) as ws:
            assert ws.subprotocol == "realtime-v1"
            ws.send("hello \u00e9t\u00e9")
            assert ws.recv() == "hello \u00e9t\u00e9"
            ws.send(b"\x00\x01binary\xff")
            assert ws.recv() == b"\x00\x01binary\xff"
            big = "x" * 300_000
            ws.send(big)
            assert ws.recv() == big
        wait_for(lambda: server.connections and server.connections[0]["left"] is not None)
    (seen,) = server.connections
    assert seen["path"] == "/v1/realtime" and seen["subprotocols"] == ["realtime-v1"]
    assert seen["left"] == 1000
    assert "authorization" not in seen["headers"] and token not in json.dumps(seen["headers"])
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_the_upstreams_close_code_and_reason_reach_the_client(realtime: tuple[RealtimeServer, str]) -> None:
    _, upstream = realtime
    with serve_gateway(upstream) as url, connect(url, "/v1/bye", make_token()) as ws:
        ws.send("anything")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")


def test_the_guard_checks_every_handshake_before_the_upstream(realtime: tuple[RealtimeServer, str]) -> None:
    """No token: 401 from the guard; past the limit: 429; the upstream never hears of either."""
    server, upstream = realtime
    guard_limits = LimitConfig(default="1/minute")
    guard = Guard(jwt=jwt_config(), limits=guard_limits, websockets="authenticate")
    with serve_in_thread(gateway_app(upstream, guard=guard), lifespan="on") as url:
        with pytest.raises(InvalidStatus) as missing:
            connect(url, "/v1/realtime", None)
        assert missing.value.response.status_code == 401
        with connect(url, "/v1/realtime", make_token()) as ws:
            ws.send("one")
            assert ws.recv() == "one"
        with pytest.raises(InvalidStatus) as limited:
            connect(url, "/v1/realtime", make_token())
        assert limited.value.response.status_code == 429
    assert len(server.connections) == 1


def test_a_connection_the_guard_did_not_check_never_reaches_the_upstream(
    realtime: tuple[RealtimeServer, str],
) -> None:
    """A guard that passes WebSockets through unchecked (``websockets="pass"``): the gateway
    closes the connection with 1008 instead of forwarding it."""
    server, upstream = realtime
    with serve_gateway(upstream, websockets="pass") as url, pytest.raises(InvalidStatus) as refused:
        connect(url, "/v1/realtime", make_token())
    assert refused.value.response.status_code == 403  # uvicorn's answer to a close before accept
    assert server.connections == []


def test_an_unreachable_upstream_refuses_the_handshake_with_502() -> None:
    started = time.monotonic()
    with serve_gateway(f"http://127.0.0.1:{free_port()}") as url, pytest.raises(InvalidStatus) as refused:
        connect(url, "/v1/realtime", make_token())
    assert time.monotonic() - started < 10
    response = refused.value.response
    assert response.status_code == 502
    assert json.loads(response.body)["code"] == "upstream_unavailable"


def test_an_upstream_refusing_the_upgrade_refuses_the_handshake_with_502(
    realtime: tuple[RealtimeServer, str],
) -> None:
    _, upstream = realtime
    with serve_gateway(upstream) as url, pytest.raises(InvalidStatus) as refused:
        connect(url, "/v1/refuse", make_token())
    assert refused.value.response.status_code == 502
    assert json.loads(refused.value.response.body)["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("code", "sent"), [(1000, 1000), (4001, 4001), (1005, 1000), (1006, 1000), (999, 1000)]
)
def test_close_codes_a_frame_cannot_carry_become_1000(code: int, sent: int) -> None:
    assert _sendable(code) == sent


def test_the_default_gateway_app_checks_websockets(
    realtime: tuple[RealtimeServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gateway_app`` building its guard from the environment checks WebSocket handshakes."""
    _, upstream = realtime
    monkeypatch.setenv("DISTILLGUARD_UPSTREAM", upstream)
    app = gateway_app()
    assert app.guard.websockets == "authenticate"
    asyncio.run(app.app.aclose())

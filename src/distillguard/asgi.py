"""Pure ASGI middleware (no ``BaseHTTPMiddleware``): a thin adapter over the core.

It turns the scope into a :class:`~distillguard.request.GuardRequest`, reads the body once under a
cap, runs the pipeline with the async driver, then either sends the refusal or calls the app with
the body replayed *once* (later ``receive()`` calls go to the server: a replay that answered
forever would starve the event loop) and the extra headers added to ``http.response.start``.
Streaming responses pass through message by message. ``lifespan`` scopes pass through
untouched, and so do ``websocket`` scopes unless ``Guard(websockets="authenticate")``: then the
handshake is decided like a request without a body, and refused with an HTTP response (the
``websocket.http.response`` extension) or a close with code 1008.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.authentication import AuthCredentials, BaseUser

from ._cutting import StreamCut
from ._drivers import adrive
from ._marking import ResponseMarking
from ._types import ASGIApp, Message, Receive, Scope, Send
from .decision import Decision
from .exchange import Exchange
from .guard import Guard
from .identity import Identity
from .request import GuardRequest
from .telemetry.propagation import ASGI_GETTER, asgi_route

__all__ = ["DistillGuardMiddleware", "GuardUser"]

_DRAIN_BYTES = 8 * 1024 * 1024
_DRAIN_SECONDS = 1.0


_STARTUP_KEYS_WAIT = 5.0
"""Seconds the lifespan startup waits for a JWKS key set (then requests get 503 until one comes)."""
_RELEASE_WAIT = 2.0
"""Seconds a concurrency lease's release may take, shielded from cancellation (then its lease
runs out instead)."""


class _Disconnected(Exception):
    pass


class GuardUser(BaseUser):
    """The verified client as Starlette's ``request.user``, so that ``@requires("embed")``
    and ``request.auth.scopes`` work on the token's scopes (set when no authentication
    middleware has set a user before the guard; one placed after it overwrites them).

    Attributes:
        client: the verified :class:`~distillguard.identity.Identity`.
    """

    __slots__ = ("client",)

    def __init__(self, client: Identity) -> None:
        self.client = client

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.client.client_id

    @property
    def identity(self) -> str:
        return self.client.client_id


def _publish(scope: Scope, decision: Decision, exchange: Exchange) -> None:
    """Put ``decision`` and the request id in the scope for the app, and its identity as
    Starlette's user."""
    scope.setdefault("state", {})["distillguard"] = decision
    scope["distillguard"] = decision
    scope["distillguard.request_id"] = exchange.request_id
    identity = decision.identity
    if identity is not None and not identity.anonymous and "user" not in scope:
        credentials = _CREDENTIALS.get(identity.scopes)
        if credentials is None:
            if len(_CREDENTIALS) >= 1024:
                _CREDENTIALS.clear()
            credentials = _CREDENTIALS[identity.scopes] = AuthCredentials(sorted(identity.scopes))
        scope["auth"] = credentials
        scope["user"] = GuardUser(identity)


_CREDENTIALS: dict[frozenset[str], AuthCredentials] = {}
"""Starlette credentials by scope set (few distinct sets; bounded)."""


class DistillGuardMiddleware:
    """Guard an ASGI application.

    Args:
        app: the ASGI application to protect.
        guard: the :class:`~distillguard.Guard` holding the configuration.

    FastAPI/Starlette: ``app.add_middleware(DistillGuardMiddleware, guard=guard)``.
    The decision is at ``scope["state"]["distillguard"]`` (``request.state.distillguard``),
    the request id of its trace (see :attr:`~distillguard.exchange.Exchange.request_id`) at
    ``scope["distillguard.request_id"]``.

    .. versionadded:: 0.1
    """

    def __init__(self, app: ASGIApp, *, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self._perform = guard.async_performer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.guard.is_exempt(scope["path"]):
            if scope["type"] == "lifespan":
                receive = self._fetching_keys_on_startup(receive)
                send = self._closing_on_shutdown(send)
            elif (
                scope["type"] == "websocket"
                and self.guard.websockets == "authenticate"
                and not self.guard.is_exempt(scope["path"])
            ):
                await self._websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        guard = self.guard
        authorization, content_type, declared, user_agent, preflight = _headers(scope)
        if preflight is not None and guard.is_preflight(scope["method"], preflight):
            await self.app(scope, receive, send)
            return
        too_large: _TooLarge | None = None
        try:
            body: bytes | None = await _read_body(receive, guard.max_body_bytes, declared)
        except _Disconnected:
            return  # the client left before sending its request: nothing to answer
        except _TooLarge as over:
            body, too_large = None, over
        client = scope.get("client")
        request = GuardRequest(
            method=scope["method"],
            path=scope["path"],
            authorization=authorization,
            content_type=content_type or "",
            body=body or b"",
            client_address=client[0] if client else None,
            user_agent=user_agent,
            timestamp=guard.clock(),
        )
        exchange = Exchange(guard, request, scope, ASGI_GETTER)
        try:
            if body is None:
                decision = guard.too_large()
            else:
                decision = await guard.adecide(request, self._perform)
            exchange.decided(decision)
            if decision.problem is not None:
                code, headers, payload = exchange.refusal(decision)
                if too_large is not None and too_large.more:
                    # read and drop the rest first: once the response is complete the server
                    # stops reading, and closing under a client still writing resets the
                    # connection before the client reads the 413
                    await _discard_rest(receive)
                await _send_response(send, code, headers, payload)
            else:
                await self._forward(scope, receive, send, request.body, exchange, decision)
                await adrive(exchange.settle(), self._perform)
        except BaseException as exc:
            await self._give_back(exchange)
            exchange.finish(exc)
            raise
        await self._give_back(exchange)
        exchange.finish()

    async def _give_back(self, exchange: Exchange) -> None:
        """Release the request's concurrency lease on the shared storage, if it holds one, on
        every path: shielded from the cancellation of a client that left, and bounded in time
        (a release that does not come through is made good by the lease running out)."""
        if exchange.leased:
            with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _RELEASE_WAIT):
                await adrive(exchange.give_back(), self._perform)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decide a WebSocket handshake like a request without a body; refuse it, or hand the
        connection to the app (with the decision in its scope)."""
        guard = self.guard
        authorization, _, _, user_agent, _ = _headers(scope)
        prefix = guard.websocket_token_protocol
        if authorization is None and prefix is not None:
            authorization, scope = _protocol_token(scope, prefix)
        client = scope.get("client")
        request = GuardRequest(
            method="GET",
            path=scope["path"],
            authorization=authorization,
            content_type="",
            body=b"",
            client_address=client[0] if client else None,
            user_agent=user_agent,
            timestamp=guard.clock(),
        )
        exchange = Exchange(guard, request, scope, ASGI_GETTER)
        try:
            decision = exchange.decided(await guard.adecide(request, self._perform))
            if decision.problem is None:  # the span and the slot last as long as the connection
                _publish(scope, decision, exchange)
                exchange.status = 101
                await self.app(scope, *self._renewing(receive, send, exchange))
            else:
                await self._refuse_websocket(scope, receive, send, exchange, decision)
        except BaseException as exc:
            await self._give_back(exchange)
            exchange.finish(exc)
            raise
        await self._give_back(exchange)
        exchange.finish()

    def _renewing(self, receive: Receive, send: Send, exchange: Exchange) -> tuple[Receive, Send]:
        """``receive`` and ``send``, renewing the exchange's concurrency lease as messages come
        in or go out (a connection that outlives half the lease keeps its slot)."""
        if not exchange.leased:
            return receive, send
        perform = self._perform

        async def renewing_receive() -> Message:
            message = await receive()
            if exchange.renewal_due():
                await adrive(exchange.renewal(), perform)
            return message

        async def renewing_send(message: Message) -> None:
            if exchange.renewal_due():
                await adrive(exchange.renewal(), perform)
            await send(message)

        return renewing_receive, renewing_send

    @staticmethod
    async def _refuse_websocket(
        scope: Scope, receive: Receive, send: Send, exchange: Exchange, decision: Decision
    ) -> None:
        """Refuse a handshake: the problem as an HTTP response when the server supports it,
        else a close with code 1008 (policy violation)."""
        if decision.problem is None:
            return
        rendered = exchange.refusal(decision)
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        await refuse_handshake(scope, send, rendered, 1008)

    def _fetching_keys_on_startup(self, receive: Receive) -> Receive:
        """With keys fetched from a JWKS URL, wait (up to 5 s, in a worker thread) for the first
        key set before the app hears of its startup: a server that reports ready after its
        lifespan startup does not answer its first requests with 503 ``auth_unavailable``."""
        verifier = self.guard.verifier
        if verifier is None or not verifier.fetches_keys:
            return receive

        async def fetching() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await anyio.to_thread.run_sync(verifier.prefetch_keys, _STARTUP_KEYS_WAIT)
            return message

        return fetching

    def _closing_on_shutdown(self, send: Send) -> Send:
        """Check the limit storage once the app has started (a warning when it does not
        answer), and close the limiter's connections once the app has shut down."""

        async def closing(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._perform.limiter.probe()
            elif message["type"] == "lifespan.shutdown.complete":
                await self._perform.limiter.aclose()
            await send(message)

        return closing

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, exchange: Exchange, decision: Decision
    ) -> None:
        _publish(scope, decision, exchange)
        replaced: list[tuple[bytes, bytes]] = []
        if decision.body is not None:
            body = decision.body
            replaced.append((b"content-length", str(len(body)).encode()))
        if exchange.plain_answer:  # an answer to rewrite must come readable
            replaced.append((b"accept-encoding", b"identity"))
        if replaced:
            names = {k for k, _ in replaced}
            scope = dict(scope)
            scope["headers"] = [*((k, v) for k, v in scope["headers"] if k not in names), *replaced]
        replayed = False
        marking: ResponseMarking | None = None
        leased = exchange.leased  # a concurrency lease to renew while the answer streams
        perform = self._perform
        # a streamed answer is cut if its client goes into the penalty box (Policy.stream_recheck)
        cut = _Cut() if exchange.rechecks else None

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            if cut is not None:
                return await cut.receive(receive)
            return await receive()

        async def observe(message: Message) -> None:
            nonlocal marking
            kind = message["type"]
            if kind == "http.response.body":
                chunk, final = message.get("body", b""), not message.get("more_body", False)
                if cut is not None and cut.armed:
                    if cut.done:  # the answer was cut: the app's later messages go nowhere
                        return
                    if not final and exchange.recheck_due():
                        await adrive(exchange.recheck(cut.events), perform)
                    if exchange.ending is not None and cut.at_boundary():
                        last = {"type": "http.response.body", "body": exchange.ending, "more_body": False}
                        await send(last)
                        cut.end()  # the app hears that the client left
                        return
                exchange.response_body(chunk, final)
                if leased and not final and exchange.renewal_due():
                    await adrive(exchange.renewal(), perform)
                if marking is not None:  # the rewriting: the app's bytes above, the client's here
                    message = {**message, "body": marking.feed(chunk) + (marking.end() if final else b"")}
                if cut is not None and cut.armed:
                    cut.sent(message.get("body", b""))
            elif kind == "http.response.start":
                exchange.route = asgi_route(scope)
                extra = exchange.response_start(message["status"])
                headers = message.get("headers", ())
                if exchange.rewrites:
                    marking = exchange.marking(
                        message["status"],
                        _header(headers, b"content-type"),
                        _header(headers, b"content-encoding"),
                    )
                if cut is not None:
                    sized = marking is None and bool(_header(headers, b"content-length"))
                    cut.arm(message["status"], _header(headers, b"content-type"), sized)
                if extra or marking is not None:
                    # the guard's rate-limit fields replace the app's own (an upstream's quota)
                    dropped = {k.encode() for k, _ in extra}
                    if marking is not None:  # its length changes; a decoded answer goes plain
                        dropped.add(b"content-length")
                        if marking.decodes:
                            dropped.add(b"content-encoding")
                    message = dict(message)
                    message["headers"] = [
                        *(h for h in headers if h[0].lower() not in dropped),
                        *((k.encode(), v.encode()) for k, v in extra),
                    ]
            await send(message)

        await self.app(scope, replay, observe)


class _Cut(StreamCut):
    """A :class:`~distillguard._cutting.StreamCut` that, once the guard has ended the answer,
    answers the app's pending and later ``receive()`` calls with ``http.disconnect`` (how ASGI
    apps learn that a client left, and stop generating)."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        super().__init__()
        self.ended = anyio.Event()

    def end(self) -> None:
        self.done = True
        self.ended.set()

    async def receive(self, receive: Receive) -> Message:
        """``receive()``, or ``http.disconnect`` as soon as the answer is cut."""
        if self.done:
            return {"type": "http.disconnect"}
        message: Message = {"type": "http.disconnect"}
        async with anyio.create_task_group() as group:

            async def real() -> None:
                nonlocal message
                message = await receive()
                group.cancel_scope.cancel()

            group.start_soon(real)
            await self.ended.wait()
            group.cancel_scope.cancel()
        return message


async def refuse_handshake(
    scope: Scope, send: Send, rendered: tuple[int, list[tuple[str, str]], bytes], close_code: int
) -> None:
    """Refuse a WebSocket handshake (after its ``websocket.connect``) with a rendered problem:
    as an HTTP response where the server supports the ``websocket.http.response`` extension,
    else a close with ``close_code``."""
    if "websocket.http.response" in scope.get("extensions", {}):
        status, headers, body = rendered
        raw: list[Any] = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": close_code})


def _header(headers: Any, wanted: bytes) -> str:
    for name, value in headers:
        if name.lower() == wanted:
            return str(value.decode("latin-1"))
    return ""


class _TooLarge(Exception):
    """The body is (or is declared to be) over the cap; ``more``: the client is still sending."""

    def __init__(self, more: bool) -> None:
        super().__init__("request body over the cap")
        self.more = more


def _protocol_token(scope: Scope, prefix: str) -> tuple[str | None, Scope]:
    """The ``Authorization`` value a handshake carries in its subprotocols (the entry starting
    with ``prefix``), and the scope without that entry (in ``subprotocols`` and in the
    ``Sec-WebSocket-Protocol`` header): the app never sees the token there."""
    offered = [str(p) for p in scope.get("subprotocols", ())]
    carrying = [p for p in offered if p.startswith(prefix)]
    if not carrying:
        return None, scope
    kept = [p for p in offered if not p.startswith(prefix)]
    headers = [(k, v) for k, v in scope["headers"] if k != b"sec-websocket-protocol"]
    if kept:
        headers.append((b"sec-websocket-protocol", ", ".join(kept).encode("latin-1")))
    return f"Bearer {carrying[0][len(prefix) :]}", {**scope, "subprotocols": kept, "headers": headers}


def _headers(scope: Scope) -> tuple[str | None, str | None, int | None, str | None, bytes | None]:
    """``(authorization, content-type, content-length, user-agent, CORS preflight method)`` of
    a request or handshake, in one pass. Several ``Authorization`` headers are joined, as WSGI
    servers do (a malformed value: refused)."""
    authorization = content_type = user_agent = None
    declared: int | None = None
    preflight: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            authorization = text if authorization is None else f"{authorization}, {text}"
        elif name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif name == b"user-agent":
            user_agent = value.decode("latin-1")
        elif name == b"access-control-request-method":
            preflight = value
    return authorization, content_type, declared, user_agent, preflight


async def _read_body(receive: Receive, cap: int, declared: int | None) -> bytes:
    """Read the whole body. Never buffers more than ``cap`` plus one message.

    Raises:
        _TooLarge: the body is (or is declared to be) over ``cap``.
        _Disconnected: the client left first."""
    if declared is not None and declared > cap:
        raise _TooLarge(more=declared > 0)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.disconnect":
            raise _Disconnected
        if kind != "http.request":
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > cap:
                raise _TooLarge(more=bool(message.get("more_body", False)))
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _discard_rest(receive: Receive) -> None:
    """Before a 413, read and drop what the client is still sending (bounded in bytes and
    time), so the server does not close the connection under a client still writing: that close
    can reach the client as a reset instead of the 413 it was sent."""
    left = _DRAIN_BYTES
    with anyio.move_on_after(_DRAIN_SECONDS):
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _send_response(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw: list[Any] = [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})

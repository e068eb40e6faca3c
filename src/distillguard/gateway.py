"""A guarded reverse proxy, for model servers that are not Python apps (vLLM, TGI, llama.cpp,
Triton, a Go or Rust service...)::

    pip install 'distillguard[gateway]'
    DISTILLGUARD_UPSTREAM=http://127.0.0.1:8000 distillguard gateway --port 8080

:class:`Gateway` is a pure ASGI app that forwards every HTTP request to ``upstream`` (the same
method, path, query string, body and end-to-end headers) with ``aiohttp`` and streams the answer
back chunk by chunk, server-sent events included; :func:`gateway_app` puts the guard in front of
it, so the guard authenticates, limits, scores and records each request exactly as it does in
front of a Python app, and reads the token usage of the upstream's answers for the token
budgets.

**What is forwarded.** Hop-by-hop headers (``Connection`` and the headers it names,
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade``) are dropped both ways, as RFC 9110 section 7.6.1 requires of a proxy. The client's
``Authorization`` header is the guard's bearer token: it is not forwarded unless
``forward_authorization`` is set; ``upstream_headers`` (e.g. the model server's own API key) are
added instead. ``X-Forwarded-For``, ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` tell the
upstream who called. The upstream is asked for an uncompressed answer (``Accept-Encoding:
identity``) so that the guard can read its token usage.

**Failures** are RFC 9457 problem+json answers, never a 500 or a hang: an upstream that cannot
be reached (within ``connect_timeout``) gives 502 ``upstream_unavailable``, one whose answer
stalls for ``timeout`` seconds (600 by default: a non-streamed answer arrives only once it is
generated) 504 ``upstream_timeout``. Once the answer has started, a failure of the upstream aborts
it (the client sees a broken response, as with any proxy, never a truncated one passed off as
complete); a client that goes away closes the upstream request.

**WebSockets** (realtime APIs) are proxied once the guard has checked the handshake
(``Guard(websockets="authenticate")``, which :func:`gateway_app` sets when it builds the guard):
the gateway opens the same path on the upstream (the end-to-end headers and the offered
subprotocols, as for a request), accepts the client with the subprotocol the upstream chose,
then relays text and binary messages both ways until one side closes, and passes that side's
close code and reason to the other. A connection the guard did not check is closed with code
1008 and never reaches the upstream. An upstream that cannot be reached, refuses the upgrade or
does not answer within ``timeout`` refuses the handshake with 502 ``upstream_unavailable`` or
504 ``upstream_timeout`` (as an HTTP response where the server supports it, else a close with
code 1014). The connection holds the client's concurrency slot while it is open.

It runs on asyncio servers (uvicorn, hypercorn with asyncio).

**Why aiohttp.** A proxy pays its HTTP client on every request: measured with
``python -m benchmarks.gateway``-style loops, one sequential request costs about 180 us of client
CPU with aiohttp and about 620 us with httpx's async client (``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import io
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .asgi import _Disconnected, _read_body, _send_response, _TooLarge, refuse_handshake
from .errors import ConfigurationError, UpstreamError
from .problems import ERROR_FORMATS, ErrorFormat, Problem
from .telemetry.config import check_header_name

if TYPE_CHECKING:
    import aiohttp

    from .guard import Guard

__all__ = ["Gateway", "gateway_app"]

_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)  # one class from Python 3.11 on

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# set by the gateway itself (Host and Content-Length by aiohttp), or the guard's (Authorization);
# and ``Expect``: the gateway's own server has met it, and the gateway holds the whole body (sent
# on, aiohttp would wait for a 100 Continue that many servers never send)
_REPLACED = frozenset(
    {b"host", b"content-length", b"accept-encoding", b"authorization", b"x-forwarded-for", b"expect"}
)
# the WebSocket handshake's own headers: aiohttp makes those of the upstream handshake
_HANDSHAKE = _REPLACED | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"sec-websocket-accept",
}
# close codes that a close frame may not carry (RFC 6455 section 7.4.1)
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


def _sendable(code: object) -> int:
    """``code`` if a close frame may carry it, else 1000."""
    if isinstance(code, int) and 1000 <= code <= 4999 and code not in _UNSENDABLE:
        return code
    return 1000


def _end_to_end(headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """``headers`` (names in lower case) without the hop-by-hop ones, those ``Connection``
    names, and ``drop``."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    skip = _HOP_BY_HOP | drop | named
    return [(name.lower(), value) for name, value in headers if name.lower() not in skip]


_LARGE_BODY = 1 << 20
"""Request bodies past this size are forwarded from a buffer (aiohttp's limit for raw bytes)."""


class Gateway:
    """Forwards HTTP requests to ``upstream`` and streams the answers back (an ASGI app).

    Args:
        upstream: the model server's base URL (``http://`` or ``https://``); request paths are
            appended to its path.
        timeout: seconds to wait for each chunk of the upstream's answer, the first included:
            a model server sends nothing of a non-streamed answer until it has generated all
            of it, minutes for a long reasoning answer, so the default is 600 seconds, as the
            OpenAI SDKs' own.
        connect_timeout: seconds to wait for a connection to the upstream.
        forward_authorization: forward the client's ``Authorization`` header (the guard's
            bearer token) to the upstream.
        upstream_headers: headers added to every forwarded request (e.g. the upstream's API key).
        max_connections: connections kept open to the upstream.
        max_body_bytes: the largest request body forwarded (the guard caps the bodies it checks;
            this caps those of exempt paths too). :func:`gateway_app` passes the guard's cap
            (``DISTILLGUARD_MAX_BODY_BYTES``), so that a body the guard admits is forwarded.
        verify: verify the upstream's TLS certificate (or the path of a CA bundle).
        request_id_header: the header naming the request's trace (when sampled) on the
            gateway's own error answers (502, 504, 413), as on the guard's refusals
            (``TelemetryConfig.request_id_header``; :func:`gateway_app` passes the guard's);
            ``None``: none.
        error_format: the shape of those answers (``"problem"`` or ``"openai"``; see
            :class:`~distillguard.Guard`; :func:`gateway_app` passes the guard's).
        on_shutdown: called in a worker thread when the server shuts down (lifespan), after
            the connections to the upstream are closed: e.g. flushing telemetry exporters.

    Raises:
        ConfigurationError: for an upstream that is not an absolute ``http``/``https`` URL, or
            bad numbers.
    """

    def __init__(
        self,
        upstream: str,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        forward_authorization: bool = False,
        upstream_headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
        max_body_bytes: int = 1 << 20,
        verify: bool | str = True,
        request_id_header: str | None = "x-request-id",
        error_format: ErrorFormat = "problem",
        on_shutdown: Sequence[Callable[[], object]] = (),
    ) -> None:
        try:
            import aiohttp  # noqa: F401  # the extra's client, checked here: fail at construction
            from yarl import URL
        except ModuleNotFoundError as exc:  # pragma: no cover - the extra is installed in tests
            raise ConfigurationError(
                "the gateway needs aiohttp: pip install 'distillguard[gateway]'"
            ) from exc
        try:
            url = URL(upstream)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the upstream is not a URL: {upstream!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(f"the upstream must be an http:// or https:// URL, not {upstream!r}")
        if not (0 < timeout <= 3600 and 0 < connect_timeout <= 3600):
            raise ConfigurationError("timeout and connect_timeout must be in (0, 3600] seconds")
        if max_connections < 1 or max_body_bytes < 1:
            raise ConfigurationError("max_connections and max_body_bytes must be positive")
        extra = [(k.lower(), v) for k, v in (upstream_headers or {}).items()]
        if any(
            name.encode("latin-1") in _HOP_BY_HOP or name in ("host", "content-length") for name, _ in extra
        ):
            raise ConfigurationError("upstream_headers cannot set hop-by-hop headers, Host or Content-Length")
        self.upstream = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.forward_authorization = forward_authorization
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.verify = verify
        self._tls: bool | ssl.SSLContext = verify is not False
        if isinstance(verify, str):  # loaded now: a bad bundle fails here, not at a request
            try:
                self._tls = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(f"cannot load the upstream CA bundle {verify!r}: {exc}") from None
        check_header_name(request_id_header, "request_id_header")
        self.request_id_header = request_id_header
        if error_format not in ERROR_FORMATS:
            raise ConfigurationError(f"error_format must be one of {', '.join(ERROR_FORMATS)}")
        self.error_format: ErrorFormat = error_format
        self._extra = extra
        self._on_shutdown = tuple(on_shutdown)
        self._base = str(url.with_query(None).with_fragment(None)).rstrip("/")
        self._client: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The pooled client (made on first use, on the server's event loop)."""
        if self._client is None:
            import aiohttp

            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.connect_timeout, sock_read=self.timeout
                ),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connections to the upstream."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                for callback in self._on_shutdown:
                    await anyio.to_thread.run_sync(callback)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _target(self, scope: Any) -> Any:
        """The upstream URL of the request: its raw path and query, unchanged, under the
        upstream's path."""
        from yarl import URL

        base = self._base
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        return URL(base + path + ("?" + query if query else ""), encoded=True)

    def _headers(self, scope: Any, drop: frozenset[bytes] = _REPLACED) -> list[tuple[str, str]]:
        incoming: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
        out = _end_to_end(incoming, drop)
        forwarded_for = [value for name, value in incoming if name.lower() == b"x-forwarded-for"]
        client = scope.get("client")
        if client:
            forwarded_for.append(str(client[0]).encode("latin-1"))
        if forwarded_for:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
        host = next((value for name, value in incoming if name.lower() == b"host"), b"")
        if host:
            out.append((b"x-forwarded-host", host))
        if self.forward_authorization:
            out.extend((b"authorization", v) for name, v in incoming if name.lower() == b"authorization")
        out.append((b"accept-encoding", b"identity"))
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in out] + self._extra

    async def _problem(self, scope: Any, send: Any, problem: Problem) -> None:
        """Answer with ``problem``, naming the request's trace as the guard's refusals do."""
        status, headers, body = problem.render(error_format=self.error_format)
        trace_id = scope.get("distillguard.request_id")
        if self.request_id_header and isinstance(trace_id, str):
            headers.append((self.request_id_header, trace_id))
        await _send_response(send, status, headers, body)

    async def _proxy(self, scope: Any, receive: Any, send: Any) -> None:
        import aiohttp

        try:
            body = await _read_body(receive, self.max_body_bytes, None)
        except _Disconnected:  # nobody to answer
            return
        except _TooLarge:
            await self._problem(scope, send, Problem.too_large(self.max_body_bytes))
            return
        try:
            response = await self._http().request(
                scope["method"],
                self._target(scope),
                headers=self._headers(scope),
                # aiohttp warns about (and sends in one write) bytes past 1 MiB: a long prompt
                # goes as a stream of known length instead
                data=body if len(body) <= _LARGE_BODY else io.BytesIO(body),
                allow_redirects=False,
            )
        except _TIMEOUTS:  # aiohttp's connect and read timeouts
            await self._problem(scope, send, Problem.upstream("upstream_timeout"))
            return
        except aiohttp.ClientError:
            await self._problem(scope, send, Problem.upstream("upstream_unavailable"))
            return
        failure: Exception | None = None
        try:
            headers = _end_to_end(response.raw_headers, frozenset())
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            async with anyio.create_task_group() as group:

                async def watch() -> None:  # a client that leaves cancels the upstream request
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    async for chunk in response.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except (aiohttp.ClientError, *_TIMEOUTS) as exc:
                    failure = exc
                group.cancel_scope.cancel()
        finally:
            if response.content.at_eof():
                response.release()  # back to the pool
            else:  # a client that left, or a broken answer: the connection goes
                response.close()
        if failure is not None:  # the answer has started: abort it, never end it as if complete
            reason = type(failure).__name__
            raise UpstreamError(f"the upstream failed during its answer ({reason})") from failure

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        """Proxy a WebSocket connection the guard has checked (see the module docstring)."""
        import aiohttp

        if "distillguard" not in scope:  # the guard did not check it: never forward it
            await send({"type": "websocket.close", "code": 1008})
            return
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            upstream = await self._http().ws_connect(
                self._target(scope),
                headers=self._headers(scope, _HANDSHAKE),
                protocols=tuple(scope.get("subprotocols") or ()),
                autoclose=False,
                autoping=True,
            )
        except _TIMEOUTS:
            await refuse_handshake(
                scope, send, Problem.upstream("upstream_timeout").render(error_format=self.error_format), 1014
            )
            return
        except aiohttp.ClientError:  # unreachable, or the upgrade refused
            await refuse_handshake(
                scope,
                send,
                Problem.upstream("upstream_unavailable").render(error_format=self.error_format),
                1014,
            )
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await _relay(upstream, receive, send)
        finally:
            await upstream.close()


def gateway_app(upstream: str | None = None, guard: Guard | None = None, **options: Any) -> Any:
    """The guard in front of a :class:`Gateway` to ``upstream`` (by default
    ``$DISTILLGUARD_UPSTREAM``; the guard by default built from the ``DISTILLGUARD_*``
    environment variables, see :mod:`distillguard.settings`, checking WebSocket handshakes). ``options`` go to
    :class:`Gateway`; ``$DISTILLGUARD_UPSTREAM_AUTHORIZATION``, when set, is sent to the upstream
    as its ``Authorization`` header."""
    from .asgi import DistillGuardMiddleware
    from .settings import guard_from_env

    target = upstream if upstream is not None else os.environ.get("DISTILLGUARD_UPSTREAM", "")
    if not target:
        raise ConfigurationError("no upstream: pass one or set DISTILLGUARD_UPSTREAM")
    key = os.environ.get("DISTILLGUARD_UPSTREAM_AUTHORIZATION")
    if key and "upstream_headers" not in options:
        options["upstream_headers"] = {"authorization": key}
    if guard is None:  # the gateway forwards WebSockets the guard has checked
        guard = guard_from_env(websockets="authenticate")
    options.setdefault("request_id_header", guard.telemetry.config.request_id_header)
    options.setdefault("error_format", guard.error_format)  # the model server's errors' shape too
    # what the guard admits must also pass the gateway's own cap (1 MiB by default)
    options.setdefault("max_body_bytes", guard.max_body_bytes)
    proxy = Gateway(target, **options)
    return DistillGuardMiddleware(proxy, guard=guard)


async def _relay(upstream: aiohttp.ClientWebSocketResponse[bool], receive: Any, send: Any) -> None:
    """Relay messages both ways until one side closes; tell the other side how it closed."""
    import aiohttp

    client_gone = False
    async with anyio.create_task_group() as group:

        async def from_client() -> None:
            nonlocal client_gone
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    if text is not None:
                        await upstream.send_str(text)
                    else:
                        await upstream.send_bytes(message.get("bytes") or b"")
                elif message["type"] == "websocket.disconnect":
                    client_gone = True
                    reason = str(message.get("reason") or "").encode()
                    await upstream.close(code=_sendable(message.get("code", 1000)), message=reason)
                    group.cancel_scope.cancel()
                    return

        group.start_soon(from_client)
        code, reason = 1000, ""
        while True:  # not ``async for``: it ends before the close frame, whose code is wanted
            msg = await upstream.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                code, reason = _sendable(msg.data), str(msg.extra or "")
                break
            else:  # closing, closed, or a broken connection
                code = 1011 if msg.type is aiohttp.WSMsgType.ERROR else 1000
                break
        if not client_gone:
            await send({"type": "websocket.close", "code": code, "reason": reason})
        group.cancel_scope.cancel()

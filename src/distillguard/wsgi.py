"""WSGI middleware (PEP 3333), in Werkzeug's ``ProxyFix`` style: a thin adapter over the core.

Flask: ``app.wsgi_app = DistillGuardWSGIMiddleware(app.wsgi_app, guard=guard)`` (or
:class:`distillguard.flask.DistillGuard`). The body is read once under a cap and replaced by an
in-memory stream holding the same bytes; the response iterable is passed through and its
``close()`` forwarded.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ._cutting import StreamCut
from ._drivers import drive
from ._marking import ResponseMarking
from .decision import Decision
from .exchange import Exchange
from .guard import Guard
from .request import GuardRequest
from .telemetry.propagation import EXCHANGE_ENVIRON_KEY, WSGI_GETTER

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["DistillGuardWSGIMiddleware"]


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


class _BadBody(Exception):
    """The body cannot be taken as sent: ``code`` and ``detail`` of the 400 answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail


def _read_body(environ: WSGIEnvironment, cap: int) -> bytes | None:
    """The request body, or ``None`` when it is over ``cap``. Without ``CONTENT_LENGTH`` the
    stream is read only when the server marks it terminated (``wsgi.input_terminated``).

    Raises:
        _BadBody: ``CONTENT_LENGTH`` is not a number of bytes (RFC 9110: digits only; ``int``
            would take ``+10`` or ``1_0``), or the body ended before it (the client went away
            mid-upload: the app must not take a part of a request for the whole)."""
    stream = environ.get("wsgi.input")
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if stream is None:
        return b""
    if raw_length:
        if not (raw_length.isascii() and raw_length.isdigit()):
            raise _BadBody("invalid_content_length", "The Content-Length header is not a number of bytes.")
        length = int(raw_length)
        if length > cap:
            return None
        chunks = []
        left = length
        while left > 0:
            chunk = stream.read(min(left, 65536))
            if not chunk:
                raise _BadBody("incomplete_body", "The request body ended before its Content-Length.")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    if environ.get("wsgi.input_terminated"):
        data: bytes = stream.read(cap + 1)
        return None if len(data) > cap else data
    return b""


def _give_back(exchange: Exchange, perform: Callable[[Any], object]) -> None:
    """Release the exchange's concurrency lease on the shared storage, if it holds one."""
    if exchange.leased:
        drive(exchange.give_back(), perform)


class _Observed:
    """Pass the app's response iterable through, showing each chunk to the exchange (unchanged,
    unless ``marks`` holds the answer's watermarking once the app has started it); ``close()``
    is forwarded, then the exchange settles and ends."""

    __slots__ = ("_cut", "_error", "_exchange", "_iterable", "_marks", "_perform")

    def __init__(
        self,
        iterable: Iterable[bytes],
        exchange: Exchange,
        perform: Callable[[Any], object],
        marks: list[ResponseMarking] | None = None,
        cut: StreamCut | None = None,
    ) -> None:
        self._iterable = iterable
        self._exchange = exchange
        self._perform = perform
        self._marks = marks if marks is not None else []
        self._cut = cut
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        observe = exchange.response_body
        marks = self._marks
        leased = exchange.leased  # a concurrency lease to renew while the answer streams
        cut = self._cut
        try:
            for chunk in self._iterable:
                if cut is not None and cut.armed:
                    if exchange.recheck_due():
                        drive(exchange.recheck(cut.events), self._perform)
                    if exchange.ending is not None and cut.at_boundary():
                        cut.done = True  # the server then calls close(): the app stops
                        yield exchange.ending
                        return
                observe(chunk)
                if leased and exchange.renewal_due():
                    drive(exchange.renewal(), self._perform)
                out = marks[0].feed(chunk) if marks else chunk
                if cut is not None:
                    cut.sent(out)
                yield out
            if marks:
                yield marks[0].end()
        except Exception as exc:  # the app failed mid-stream: record it on the span at close()
            self._error = exc
            raise

    def close(self) -> None:
        exchange = self._exchange
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            _give_back(exchange, self._perform)
            exchange.finish(exc)
            raise
        if self._error is None:  # an app that failed mid-response keeps the estimate (as ASGI)
            drive(exchange.settle(), self._perform)
        _give_back(exchange, self._perform)
        exchange.finish(self._error)


def _closing(result: Any, exchange: Exchange, perform: Callable[[Any], object]) -> Iterable[bytes]:
    """Return the server's own file wrapper (so that it can send the file with ``sendfile``),
    settling and ending the exchange when the server closes it. Its bytes are not shown to the
    exchange: a file carries no token usage."""
    inner = getattr(result, "close", None)

    def close() -> None:
        try:
            if inner is not None:
                inner()
        except BaseException as exc:
            _give_back(exchange, perform)
            exchange.finish(exc)
            raise
        drive(exchange.settle(), perform)
        _give_back(exchange, perform)
        exchange.finish()

    try:
        result.close = close
    except AttributeError:  # a wrapper whose close cannot be replaced: observe it as any iterable
        return _Observed(result, exchange, perform)
    wrapped: Iterable[bytes] = result
    return wrapped


class DistillGuardWSGIMiddleware:
    """Guard a WSGI application.

    Args:
        app: the WSGI application to protect.
        guard: the :class:`~distillguard.Guard` holding the configuration.

    The decision is at ``environ["distillguard.decision"]``, the verified identity at
    ``environ["distillguard.identity"]`` and the request id of its trace (see
    :attr:`~distillguard.exchange.Exchange.request_id`) at ``environ["distillguard.request_id"]``.

    .. versionadded:: 0.1
    """

    def __init__(self, app: WSGIApplication, *, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self._perform = guard.sync_performer()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        guard = self.guard
        path = environ.get("PATH_INFO", "") or "/"
        if guard.is_exempt(path) or guard.is_preflight(
            environ.get("REQUEST_METHOD", ""), environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
        ):
            return self.app(environ, start_response)
        refusal: Decision | None = None
        try:
            body = _read_body(environ, guard.max_body_bytes)
        except _BadBody as bad:
            body, refusal = b"", guard.bad_body(bad.code, bad.detail)
        except OSError:  # the server's error for a client gone mid-upload
            body, refusal = b"", guard.bad_body("incomplete_body", "The request body could not be read.")
        request = GuardRequest(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=path,
            authorization=environ.get("HTTP_AUTHORIZATION"),
            content_type=environ.get("CONTENT_TYPE", ""),
            body=body or b"",
            client_address=environ.get("REMOTE_ADDR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
            timestamp=guard.clock(),
        )
        exchange = Exchange(guard, request, environ, WSGI_GETTER)
        try:
            if refusal is not None:
                decision = refusal
            elif body is None:
                decision = guard.too_large()
            else:
                decision = guard.decide(request, self._perform)
            exchange.decided(decision)
            if decision.problem is not None:
                code, headers, payload = exchange.refusal(decision)
                # PEP 3333: applications must not send hop-by-hop headers (``Connection``);
                # the server decides whether to close.
                start_response(_status_line(code), [h for h in headers if h[0].lower() != "connection"])
                exchange.finish()
                return [payload]
            sent = decision.body if decision.body is not None else request.body
            environ["wsgi.input"] = io.BytesIO(sent)
            environ["CONTENT_LENGTH"] = str(len(sent))
            if exchange.plain_answer:  # an answer to rewrite must come readable
                environ["HTTP_ACCEPT_ENCODING"] = "identity"
            environ["distillguard.decision"] = decision
            environ["distillguard.identity"] = decision.identity
            environ["distillguard.request_id"] = exchange.request_id
            environ[EXCHANGE_ENVIRON_KEY] = exchange

            marks: list[ResponseMarking] = []  # the rewriting of the answer, if any
            # a streamed answer is cut if its client goes into the penalty box
            cut = StreamCut() if exchange.rechecks else None

            def start_with_headers(
                status_line: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Any:
                status = int(status_line[:3])
                extra = exchange.response_start(status)
                if exchange.rewrites:
                    found = {k.lower(): v for k, v in headers}
                    marking = exchange.marking(
                        status, found.get("content-type", ""), found.get("content-encoding", "")
                    )
                    marks[:] = [marking] if marking is not None else []
                    if marking is not None:  # its length changes; a decoded answer goes plain
                        gone = (
                            ("content-length", "content-encoding") if marking.decodes else ("content-length",)
                        )
                        headers = [h for h in headers if h[0].lower() not in gone]
                if cut is not None:
                    found = {k.lower(): v for k, v in headers}
                    cut.arm(status, found.get("content-type", ""), "content-length" in found)
                if extra:  # the guard's rate-limit fields replace the app's own (an upstream's quota)
                    dropped = {k for k, _ in extra}
                    headers = [h for h in headers if h[0].lower() not in dropped]
                return start_response(status_line, [*headers, *extra], exc_info)

            result = self.app(environ, start_with_headers)
        except BaseException as exc:
            _give_back(exchange, self._perform)
            exchange.finish(exc)
            raise
        exchange.detach()
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(result, wrapper):
            return _closing(result, exchange, self._perform)  # the server may still sendfile() it
        return _Observed(result, exchange, self._perform, marks, cut)

"""Shared test helpers: real key pairs, a JWT factory, recording echo apps and test detectors.

Import from here in any test module (``from tests.helpers import make_token``); the fixtures
built on these live in ``tests/conftest.py``.

Everything is real: tokens are signed with real keys by PyJWT, and the echo apps are real ASGI
and WSGI applications that record what reached them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from opentelemetry import trace

from distillguard import DetectorResult, JWTConfig, Observation

__all__ = [
    "AUDIENCE",
    "HS256_SECRET",
    "ISSUER",
    "STREAM_CHUNKS",
    "SUBJECT",
    "AsyncStaticDetector",
    "BlockingDetector",
    "Dial",
    "Call",
    "EchoASGIApp",
    "EchoWSGIApp",
    "KeyPair",
    "Keys",
    "NotADetector",
    "RaisingDetector",
    "StaticDetector",
    "assert_no_secrets",
    "b64url",
    "default_claims",
    "failing_factory",
    "guard_spans",
    "jwt_config",
    "keys",
    "make_token",
    "raw_token",
    "span_strings",
    "static_detector_factory",
]

ISSUER = "https://idp.example.test"
"""The issuer every test guard accepts by default."""
AUDIENCE = "api"
"""The audience every test guard accepts by default."""
HS256_SECRET = b"distillguard-test-secret-0123456789abcdef"
"""The default HMAC secret (41 bytes, over the 32-byte minimum)."""
SUBJECT = "client-1"
"""The default ``sub`` of :func:`make_token`."""


# -- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """An asymmetric key pair with the algorithm it signs for.

    Attributes:
        alg: the JWS algorithm (``RS256``, ``ES256``, ``EdDSA``).
        private: the private key object (signs tokens).
        public: the public key object.
        public_pem: the public key as PEM bytes (what a guard is configured with).
    """

    alg: str
    private: Any
    public: Any
    public_pem: bytes


def _pair(alg: str, private: Any) -> KeyPair:
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(alg=alg, private=private, public=public, public_pem=pem)


@dataclass(frozen=True, slots=True, kw_only=True)
class Keys:
    """Every test key: the HMAC secret and one pair per asymmetric family."""

    hs256: bytes
    rsa: KeyPair
    ec: KeyPair
    ed25519: KeyPair


@functools.lru_cache(maxsize=1)
def keys() -> Keys:
    """The test keys, generated once per process (RSA 2048, EC P-256, Ed25519)."""
    return Keys(
        hs256=HS256_SECRET,
        rsa=_pair("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ec=_pair("ES256", ec.generate_private_key(ec.SECP256R1())),
        ed25519=_pair("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    )


# -- tokens ----------------------------------------------------------------------------------


def b64url(data: bytes | Mapping[str, Any] | list[Any]) -> str:
    """Base64url without padding; dicts and lists are JSON-encoded first."""
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_token(
    *,
    key: Any = None,
    alg: str = "HS256",
    headers: Mapping[str, Any] | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A real signed JWT with valid default claims.

    Defaults: ``iss`` = :data:`ISSUER`, ``aud`` = :data:`AUDIENCE`, ``sub`` = ``"client-1"``,
    ``iat`` = now, ``exp`` = now + 300. Keyword claims override them; a claim given as ``None``
    is left out (``make_token(exp=None)`` has no ``exp``).

    Args:
        key: the signing key (the HMAC secret by default; a :class:`KeyPair` signs with its
            private key and, unless ``alg`` is given explicitly, its algorithm).
        alg: the JWS algorithm.
        headers: extra JOSE header members (``kid``, ``jku``...).
        now: the issue time (unix seconds; the current time by default).
    """
    payload = default_claims(now, **claims)
    if isinstance(key, KeyPair):
        if alg == "HS256":
            alg = key.alg
        key = key.private
    elif key is None:
        key = HS256_SECRET
    return pyjwt.encode(payload, key, algorithm=alg, headers=dict(headers) if headers else None)


def raw_token(header: Mapping[str, Any], payload: Mapping[str, Any], *, hmac_key: bytes | None = None) -> str:
    """A hand-built token for attacks PyJWT refuses to sign (``alg: none``, HS256 keyed with
    an RSA public key). Signs ``header.payload`` with HMAC-SHA256 under ``hmac_key``; without a
    key the signature is empty."""
    signing_input = f"{b64url(dict(header))}.{b64url(dict(payload))}"
    if hmac_key is None:
        return signing_input + "."
    sig = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def default_claims(now: float | None = None, **claims: Any) -> dict[str, Any]:
    """The claims :func:`make_token` would sign (for :func:`raw_token`)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": issued,
        "exp": issued + 300,
    }
    payload.update(claims)
    return {k: v for k, v in payload.items() if v is not None}


def jwt_config(**overrides: Any) -> JWTConfig:
    """A :class:`~distillguard.JWTConfig` for the test issuer and audience (HS256 by default)."""
    options: dict[str, Any] = {
        "algorithms": ["HS256"],
        "key": HS256_SECRET,
        "issuer": ISSUER,
        "audience": AUDIENCE,
    }
    options.update(overrides)
    return JWTConfig(**options)


# -- detectors -------------------------------------------------------------------------------


class Dial:
    """A detector whose score is set by the test, with a numeric signal."""

    name = "dial"

    def __init__(self) -> None:
        self.value = 0.0
        self.calls = 0

    def score(self, observation: Observation) -> DetectorResult:
        self.calls += 1
        reasons = ("turned_up",) if self.value else ()
        return DetectorResult(self.name, self.value, reasons, {"level": self.value})


class StaticDetector:
    """Gives every request the same score; counts its calls."""

    def __init__(self, score: float = 0.0, *, name: str = "static", reasons: tuple[str, ...] = ("static",)):
        self.name = name
        self.value = score
        self.reasons = reasons if score > 0 else ()
        self.calls: list[Observation] = []

    def score(self, observation: Observation) -> DetectorResult:
        self.calls.append(observation)
        return DetectorResult(self.name, self.value, self.reasons)


class RaisingDetector:
    """A detector with a bug: ``score`` always raises."""

    def __init__(self, *, name: str = "broken") -> None:
        self.name = name
        self.calls = 0

    def score(self, observation: Observation) -> DetectorResult:
        self.calls += 1
        raise RuntimeError("detector bug")


class AsyncStaticDetector:
    """An :class:`~distillguard.AsyncDetector` that awaits once, then gives a fixed score."""

    def __init__(self, score: float = 0.0, *, name: str = "async_static") -> None:
        self.name = name
        self.value = score
        self.calls = 0

    async def score(self, observation: Observation) -> DetectorResult:
        import anyio

        await anyio.sleep(0)
        self.calls += 1
        return DetectorResult(self.name, self.value, ("async",) if self.value else ())


class BlockingDetector:
    """A detector that declares ``blocking = True``; records the thread it ran on."""

    blocking = True

    def __init__(self, score: float = 0.0, *, name: str = "blocking") -> None:
        self.name = name
        self.value = score
        self.threads: list[int] = []

    def score(self, observation: Observation) -> DetectorResult:
        self.threads.append(threading.get_ident())
        return DetectorResult(self.name, self.value)


def static_detector_factory(score: float = 0.0, name: str = "static") -> StaticDetector:
    """An entry-point-style factory (``tests.helpers:static_detector_factory``)."""
    return StaticDetector(score, name=name)


def failing_factory(**options: Any) -> Any:
    """An entry-point factory that fails."""
    raise RuntimeError("factory failed")


class NotADetector:
    """Has a ``name`` but no ``score``."""

    name = "not_a_detector"


# -- echo apps -------------------------------------------------------------------------------

STREAM_CHUNKS = (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n")
"""What the echo apps stream on ``/stream``."""


@dataclass(slots=True, kw_only=True)
class Call:
    """One call of an echo app: what the app saw (``span_context``: the current span's)."""

    method: str
    path: str
    body: bytes
    content_length: str | None
    identity: Any
    decision: Any
    span_context: Any = None


UPSTREAM_QUOTA_HEADERS = (
    ("X-RateLimit-Remaining-Requests", "4999"),
    ("RateLimit", '"upstream";r=4999;t=1'),
    ("X-Request-Id", "req-1"),
)
"""What ``/quota`` of the echo apps sends besides its body: an upstream's own quota (as OpenAI
and IETF fields) and an unrelated header."""


async def read_body(receive: Any) -> bytes:
    """The whole body of an ASGI HTTP request, as a stand-in server reads it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


class EchoASGIApp:
    """An ASGI app that records each HTTP call and answers by path.

    ``/stream`` streams :data:`STREAM_CHUNKS` (one ``send`` each), ``/empty`` answers 204,
    ``/boom`` raises ``RuntimeError("app failed")``, ``/boom-stream`` sends one chunk then
    raises ``RuntimeError("app failed mid-stream")``, ``/quota`` answers 200 JSON with an
    upstream's own rate-limit fields (:data:`UPSTREAM_QUOTA_HEADERS`), anything else answers
    200 JSON ``{"ok": true}``. After reading the body it calls ``receive()`` once more when
    ``receive_again`` is set and keeps the message in ``after_body``. ``lifespan`` sets
    ``started``/``stopped``; a ``websocket`` is accepted, greeted and closed.
    """

    def __init__(self, *, receive_again: bool = False) -> None:
        self.calls: list[Call] = []
        self.receive_again = receive_again
        self.after_body: list[Any] = []
        self.started = False
        self.stopped = False
        self.websocket_scopes: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.started = True
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.stopped = True
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            self.websocket_scopes.append(scope)
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "hello"})
            await send({"type": "websocket.close", "code": 1000})
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if self.receive_again:
            self.after_body.append(await receive())
        decision = scope.get("state", {}).get("distillguard")
        headers = dict(scope["headers"])
        self.calls.append(
            Call(
                method=scope["method"],
                path=scope["path"],
                body=b"".join(chunks),
                content_length=headers[b"content-length"].decode() if b"content-length" in headers else None,
                identity=getattr(decision, "identity", None),
                decision=decision,
                span_context=trace.get_current_span().get_span_context(),
            )
        )
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("app failed")
        if path == "/empty":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/boom-stream":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("app failed mid-stream")
        if path == "/stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            for chunk in STREAM_CHUNKS:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        payload = b'{"ok":true}'
        extra = UPSTREAM_QUOTA_HEADERS if path == "/quota" else ()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *((k.encode(), v.encode()) for k, v in extra),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload})


class _ClosingIterable:
    def __init__(self, chunks: Iterable[bytes], app: EchoWSGIApp) -> None:
        self._chunks = chunks
        self._app = app

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        self._app.closed += 1


def _fail_after_first_chunk() -> Iterator[bytes]:
    yield b"partial"
    raise RuntimeError("app failed mid-stream")


class EchoWSGIApp:
    """The WSGI twin of :class:`EchoASGIApp` (same paths, same answers). Counts ``close()``
    calls of its response iterables in ``closed``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.closed = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        stream = environ["wsgi.input"]
        body = stream.read(int(length)) if length else b""
        path = environ.get("PATH_INFO", "/")
        self.calls.append(
            Call(
                method=environ["REQUEST_METHOD"],
                path=path,
                body=body,
                content_length=length or None,
                identity=environ.get("distillguard.identity"),
                decision=environ.get("distillguard.decision"),
                span_context=trace.get_current_span().get_span_context(),
            )
        )
        if path == "/boom":
            raise RuntimeError("app failed")
        if path == "/empty":
            start_response("204 No Content", [])
            return _ClosingIterable([], self)
        if path == "/boom-stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _ClosingIterable(_fail_after_first_chunk(), self)
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return _ClosingIterable(iter(STREAM_CHUNKS), self)
        payload = b'{"ok":true}'
        extra = UPSTREAM_QUOTA_HEADERS if path == "/quota" else ()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra]
        )
        return _ClosingIterable([b"" if environ["REQUEST_METHOD"] == "HEAD" else payload], self)


# -- spans -----------------------------------------------------------------------------------


def guard_spans(exporter: Any) -> list[Any]:
    """The finished ``distillguard.guard`` spans of an ``InMemorySpanExporter``, oldest first."""
    from distillguard.telemetry import SPAN_NAME

    return [s for s in exporter.get_finished_spans() if s.name == SPAN_NAME]


def span_strings(span: Any) -> list[str]:
    """Every string on ``span``: attribute values, event names and event attribute values,
    exception messages included (for "no secret anywhere" assertions)."""
    out: list[str] = [span.name]

    def add(attributes: Any) -> None:
        for key, value in (attributes or {}).items():
            out.append(str(key))
            values = value if isinstance(value, (list, tuple)) else [value]
            out.extend(str(v) for v in values)

    add(span.attributes)
    for event in span.events:
        out.append(event.name)
        add(event.attributes)
    if span.status.description:
        out.append(span.status.description)
    return out


def assert_no_secrets(span: Any, *secrets: str) -> None:
    """Fail when any of ``secrets`` (raw prompt text, a token, a signature) appears anywhere
    in ``span``'s attributes or events."""
    for text in span_strings(span):
        for secret in secrets:
            assert secret not in text, f"{secret[:20]!r}... leaked into span: {text[:80]!r}"


def decide_anonymous(guard: Any, address: str, body: bytes = b"") -> tuple[str, int | None]:
    """Decide one anonymous ``POST /v1/chat/completions`` from ``address`` with ``guard``'s
    synchronous performer, at ``guard.clock()``: ``(action, Retry-After or None)``."""
    from distillguard.request import GuardRequest

    request = GuardRequest(
        method="POST",
        path="/v1/chat/completions",
        authorization=None,
        content_type="application/json" if body else "",
        body=body,
        client_address=address,
        user_agent=None,
        timestamp=guard.clock(),
    )
    decision = guard.decide(request, guard.sync_performer())
    retry = dict(decision.problem.headers).get("retry-after") if decision.problem else None
    return decision.action.value, int(retry) if retry is not None else None

"""Fixtures for the JWKS tests: a real HTTP server on 127.0.0.1 serving a key set the test
controls, a "black hole" endpoint that accepts connections and never answers, and JWK helpers.

``jwks_server.set_keys([...])`` publishes JWKs; ``jwks_server.mode`` switches the behaviour
(``"ok"``, ``"503"``, ``"html"``, ``"empty"``, ``"redirect"``, ``"hang"``). ``hits`` counts
requests, ``max_concurrent`` the most requests in flight at once; ``hang_refresh(keys)`` leaves
one background refresh hanging. ``make_keys(url, **options)`` builds ``JWKSKeys`` closed after
the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from distillguard import JWKSKeys
from tests.helpers import KeyPair, _pair
from tests.servers import BlackHole


def to_jwk(pair: KeyPair, kid: Any, *, alg: str | None = "default", **extra: Any) -> dict[str, Any]:
    """The public JWK of ``pair`` with ``kid``; ``alg`` defaults to the pair's algorithm
    (``None`` leaves it out)."""
    if isinstance(pair.public, rsa.RSAPublicKey):
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(pair.public, as_dict=True)
    elif pair.alg == "ES256":
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(pair.public, as_dict=True)
    else:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(pair.public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    if alg == "default":
        alg = pair.alg
    if alg is not None:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    jwk.update(extra)
    return jwk


class JWKSServer:
    """A threaded HTTP server serving ``/jwks.json``; the behaviour is switchable at run time."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.mode = "ok"
        self.redirect_to = "http://127.0.0.1:9/jwks.json"
        self.hits = 0
        self.log: list[tuple[float, str]] = []  # (when, mode) of each request
        self.in_flight = 0
        self.max_concurrent = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.log.append((time.monotonic(), server.mode))
                    server.hits += 1
                    server.in_flight += 1
                    server.max_concurrent = max(server.max_concurrent, server.in_flight)
                try:
                    server._answer(self)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that gave up (timeouts) are expected here

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def set_keys(self, keys: list[Any]) -> None:
        """Publish ``keys`` as the key set (and switch to ``"ok"``)."""
        self.document = {"keys": keys}
        self.mode = "ok"

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "hang":
            self.release.wait(10)
            return
        if mode == "redirect":
            handler.send_response(302)
            handler.send_header("Location", self.redirect_to)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        status, ctype, body = 200, "application/json", json.dumps(self.document).encode()
        if mode == "503":
            status, body = 503, b'{"error":"unavailable"}'
        elif mode == "html":
            ctype, body = "text/html", b"<html><body>Sign in</body></html>"
        elif mode == "empty":
            body = b"{}"
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def hang_refresh(self, keys: JWKSKeys) -> None:
        """Switch to ``"hang"`` and start a refresh of ``keys``; return once it hangs here."""
        self.mode = "hang"
        keys.refresh()
        deadline = time.monotonic() + 3
        while self.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.in_flight == 1

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    """A JWKS server on a free loopback port."""
    server = JWKSServer()
    yield server
    server.close()


@pytest.fixture
def other_server() -> Iterator[JWKSServer]:
    """A second server (a redirect target that must never be reached)."""
    server = JWKSServer()
    yield server
    server.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A URL whose host accepts TCP connections (kernel backlog) and never answers."""
    hole = BlackHole()
    yield f"http://127.0.0.1:{hole.port}/jwks.json"
    hole.close()


@pytest.fixture
def make_keys() -> Iterator[Callable[..., JWKSKeys]]:
    """Build ``JWKSKeys(url, **options)``; every one built is closed after the test."""
    created: list[JWKSKeys] = []

    def build(url: str, **options: Any) -> JWKSKeys:
        keys = JWKSKeys(url, **options)
        created.append(keys)
        return keys

    yield build
    for keys in created:
        keys.close()


@pytest.fixture(scope="session")
def rsa_keypair_2() -> KeyPair:
    """A second RSA key pair, for rotation."""
    return _pair("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def rsa_1024() -> KeyPair:
    """An RSA key pair under PyJWT's 2048-bit minimum (a misconfigured issuer's key)."""
    return _pair("RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))

"""Servers for the example apps, over real HTTP.

``serve(kind, environ=..., **guard_overrides)`` builds the FastAPI (``"fastapi"``) or Flask
(``"flask"``) example with a guard read from ``environ`` (by :func:`distillguard.settings.guard_from_env`)
and serves it on a free local port: uvicorn in a thread for FastAPI, Werkzeug's threaded WSGI
server for Flask. It returns the base URL; servers stop at the end of the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import openai
import pytest
from werkzeug.serving import make_server

from distillguard.cli.demo import serve as serve_asgi
from distillguard.settings import guard_from_env

ENV = {
    "DISTILLGUARD_JWT_SECRET": "an-example-test-secret-of-at-least-32-bytes",
    "DISTILLGUARD_JWT_ISSUER": "https://idp.test.example",
    "DISTILLGUARD_JWT_AUDIENCE": "example-api",
    "DISTILLGUARD_LIMITS": "1000/minute",
    "DISTILLGUARD_DETECTORS": "",
}
"""The environment of the example apps under test (no development defaults)."""

KINDS = ("fastapi", "flask")

Serve = Callable[..., str]


@contextmanager
def serve_wsgi(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the WSGI ``app`` with Werkzeug's threaded server on a free port; yield its URL."""
    server = make_server(host, 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start an example app (see the module docstring); return its base URL."""
    with ExitStack() as stack:

        def start(kind: str, environ: Mapping[str, str] = ENV, **overrides: Any) -> str:
            guard = guard_from_env(environ, **overrides)
            if kind == "fastapi":
                from examples.fastapi_app import create_app as create_asgi

                return stack.enter_context(serve_asgi(create_asgi(guard)))
            from examples.flask_app import create_app as create_wsgi

            return stack.enter_context(serve_wsgi(create_wsgi(guard)))

        yield start


@pytest.fixture
def openai_client() -> Iterator[Callable[..., openai.OpenAI]]:
    """``openai_client(base_url, token)``: the official client, without retries."""
    clients: list[openai.OpenAI] = []

    def build(base_url: str, token: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key=token, max_retries=0, timeout=10)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()

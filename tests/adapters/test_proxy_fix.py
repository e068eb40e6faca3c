"""The client address behind a proxy (docs/security.md): Werkzeug's ProxyFix placed *outside*
the guard makes anonymous limits follow the address the proxy saw, and a client writing its own
``X-Forwarded-For`` entries gains nothing; placed inside the guard, every client shares the
proxy's address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from distillguard import DistillGuardWSGIMiddleware, Guard, LimitConfig

pytestmark = pytest.mark.timeout(30)

PROXY = "10.0.0.5"


def app(guard_factory: Callable[..., Guard], *, right_order: bool) -> Any:
    flask = Flask("proxied")

    @flask.post("/v1/chat/completions")
    def chat() -> dict[str, str]:
        return {"ok": "yes"}

    guard = guard_factory(jwt=None, limits=LimitConfig(default="1/minute"))
    if right_order:  # the outer wrapper runs first: the guard sees the fixed address
        flask.wsgi_app = ProxyFix(DistillGuardWSGIMiddleware(flask.wsgi_app, guard=guard), x_for=1)  # type: ignore[method-assign]
    else:
        flask.wsgi_app = DistillGuardWSGIMiddleware(ProxyFix(flask.wsgi_app, x_for=1), guard=guard)  # type: ignore[method-assign]
    return flask.test_client()


def post(client: Any, forwarded: str) -> int:
    response = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"x-forwarded-for": forwarded},
        environ_base={"REMOTE_ADDR": PROXY},
    )
    return int(response.status_code)


def test_proxy_fix_outside_the_guard_keys_clients_by_the_address_the_proxy_saw(
    guard_factory: Callable[..., Guard],
) -> None:
    client = app(guard_factory, right_order=True)
    assert post(client, "203.0.113.9") == 200
    assert post(client, "198.51.100.4") == 200  # another client: its own window
    assert post(client, "203.0.113.9") == 429
    # the client prepends entries of its own: the proxy appended the real address last
    assert post(client, "1.1.1.1, 203.0.113.9") == 429
    assert post(client, "2.2.2.2, 203.0.113.9") == 429


def test_proxy_fix_inside_the_guard_puts_every_client_behind_one_address(
    guard_factory: Callable[..., Guard],
) -> None:
    client = app(guard_factory, right_order=False)
    assert post(client, "203.0.113.9") == 200
    assert post(client, "198.51.100.4") == 429  # everyone is the proxy

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


def test_proxy_fix_without_a_proxy_in_front_lets_a_client_pick_its_address(
    guard_factory: Callable[..., Guard],
) -> None:
    """The misconfiguration docs/security.md warns of: ProxyFix trusts one hop, but nothing in
    front appends the real address, so the client's own ``X-Forwarded-For`` is taken: writing
    a new address on each request gives a new anonymous identity, past a 1/minute limit."""
    client = app(guard_factory, right_order=True)
    statuses = [
        client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"x-forwarded-for": f"203.0.113.{i}"},
            environ_base={"REMOTE_ADDR": "198.51.100.77"},  # the client itself, no proxy
        ).status_code
        for i in range(1, 6)
    ]
    assert statuses == [200] * 5


@pytest.mark.parametrize(("trusted", "spoofed"), [("*", True), ("10.0.0.5", False)])
def test_uvicorn_forwarded_allow_ips(trusted: str, spoofed: bool) -> None:
    """Through uvicorn with ``--proxy-headers``: with ``--forwarded-allow-ips='*'`` and no proxy
    in front, a client rotating ``X-Forwarded-For`` escapes a 1/minute anonymous limit (the
    spoof docs/security.md warns of); trusting only the proxy's address, the header of a
    client connecting directly is ignored and its second request is refused."""
    import httpx

    from distillguard import DistillGuardMiddleware
    from tests.helpers import EchoASGIApp
    from tests.servers import serve_in_thread

    guard = Guard(jwt=None, limits=LimitConfig(default="1/minute"))
    mw = DistillGuardMiddleware(EchoASGIApp(), guard=guard)
    with serve_in_thread(mw, proxy_headers=True, forwarded_allow_ips=trusted) as url:
        statuses = [
            httpx.post(
                f"{url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers={"x-forwarded-for": f"203.0.113.{i}"},
            ).status_code
            for i in range(1, 4)
        ]
    assert statuses == ([200, 200, 200] if spoofed else [200, 429, 429])

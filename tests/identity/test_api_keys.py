"""Opaque API keys as bearer tokens (``Guard(api_keys=APIKeys(...))``): a configured key is its
client (tier, tenant, scopes) in both adapters, an unknown key is the same generic 401 as a bad
JWT, keys are held by digest only, and with a JWT configuration both kinds of token work."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from distillguard import (
    APIKey,
    APIKeys,
    ConfigurationError,
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    LimitConfig,
)
from distillguard.settings import guard_from_env
from tests.examples.conftest import ENV
from tests.helpers import EchoASGIApp, EchoWSGIApp, jwt_config, make_token
from tests.limiting.apps import asgi_call, chat_body, wsgi_call

KEY = "sk-live-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e"
OTHER = "sk-live-00000000000000000000000000000000"
KEYS = APIKeys(
    keys={
        APIKeys.digest(KEY): APIKey(client_id="acme-batch", tier="pro", tenant="acme", scopes=("chat",)),
        APIKeys.digest(OTHER): APIKey(client_id="nobody-scoped"),
    },
    required_scopes=("chat",),
)


def call(kind: str, guard: Guard, token: str | None) -> tuple[int, dict[str, str], Any]:
    if kind == "asgi":
        app: Any = EchoASGIApp()
        return asyncio.run(asgi_call(DistillGuardMiddleware(app, guard=guard), chat_body(), token=token))
    return wsgi_call(DistillGuardWSGIMiddleware(EchoWSGIApp(), guard=guard), chat_body(), token=token)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_configured_key_is_its_client(kind: str) -> None:
    """The key's client, tier and tenant reach the limits (the pro tier's window) and the app;
    an unknown key gets 401 ``invalid_token``, like a bad JWT; a key without the required
    scope gets 403; no token gets 401 ``missing_token``."""
    guard = Guard(jwt=None, api_keys=KEYS, limits=LimitConfig(default="1/minute", tiers={"pro": "3/minute"}))
    assert [call(kind, guard, KEY)[0] for _ in range(4)] == [200, 200, 200, 429]
    status, headers, body = call(kind, guard, "sk-live-unknown")
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert json.loads(body)["code"] == "invalid_token"
    assert call(kind, guard, OTHER)[0] == 403
    status, headers, _ = call(kind, guard, None)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="api"'


def test_the_app_sees_the_keys_identity() -> None:
    app = EchoASGIApp()
    guard = Guard(jwt=None, api_keys=KEYS)
    status, _, _ = asyncio.run(asgi_call(DistillGuardMiddleware(app, guard=guard), chat_body(), token=KEY))
    assert status == 200
    identity = app.calls[-1].identity
    assert (identity.client_id, identity.tier, identity.tenant) == ("acme-batch", "pro", "acme")


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_jwts_and_api_keys_side_by_side(kind: str) -> None:
    """With a JWT configuration too, a JWT is verified as a JWT (a forged one refused) and any
    other token as an API key; the JWT configuration's scope rules apply to both."""
    guard = Guard(jwt=jwt_config(), api_keys=KEYS)
    assert call(kind, guard, make_token())[0] == 200
    assert call(kind, guard, make_token(key=b"another-secret-of-at-least-32-bytes!"))[0] == 401
    assert call(kind, guard, KEY)[0] == 200
    assert call(kind, guard, OTHER)[0] == 200  # no required scope in this JWT configuration
    assert call(kind, guard, "sk-live-unknown")[0] == 401


def test_keys_are_configured_by_digest_only(tmp_path: Path) -> None:
    """A raw key where a digest belongs is refused (it must never be kept); a JSON file of
    digests loads; a malformed file fails at startup."""
    with pytest.raises(ConfigurationError, match="digest"):
        APIKeys(keys={KEY: APIKey(client_id="x")})
    with pytest.raises(ConfigurationError):
        APIKey(client_id="")
    with pytest.raises(ConfigurationError):
        Guard(jwt=None, api_keys={"a": "b"})  # type: ignore[arg-type]
    good = tmp_path / "keys.json"
    good.write_text(
        json.dumps({APIKeys.digest(KEY): {"client": "acme-batch", "tier": "pro", "scopes": ["chat"]}})
    )
    loaded = APIKeys.from_file(good)
    assert loaded.identify(KEY).client_id == "acme-batch" and KEY not in repr(loaded)
    for text in ("not json", "[]", json.dumps({APIKeys.digest(KEY): {"tier": "pro"}})):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigurationError):
            APIKeys.from_file(bad)
    with pytest.raises(ConfigurationError, match="cannot be read"):
        APIKeys.from_file(tmp_path / "missing.json")


def test_the_environment_reads_an_api_keys_file(tmp_path: Path) -> None:
    """``DISTILLGUARD_API_KEYS_FILE`` adds the file's keys to the JWT configuration."""
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({APIKeys.digest(KEY): {"client": "acme-batch", "tier": "pro"}}))
    guard = guard_from_env({**ENV, "DISTILLGUARD_API_KEYS_FILE": str(path)})
    assert guard.verifier is not None and guard.verifier.verify(KEY).client_id == "acme-batch"


def test_a_key_whose_client_is_no_text_is_refused_at_construction() -> None:
    """A lone surrogate (valid JSON in a keys file) cannot name counters in Redis."""
    from distillguard import APIKey
    from distillguard.errors import ConfigurationError

    for fields in (
        {"client_id": "a\ud800"},
        {"client_id": "a", "tier": "t\udfff"},
        {"client_id": "a", "tenant": "\ud800"},
    ):
        with pytest.raises(ConfigurationError, match="valid text"):
            APIKey(**fields)  # type: ignore[arg-type]

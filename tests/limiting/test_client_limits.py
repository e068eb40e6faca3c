"""A client's own windows in place of its tier's (``Identity.limits``): from a token claim
(``JWTConfig.limits_claim``) or an API key (``APIKey.limits``), through the ASGI and the WSGI
adapters, with the RateLimit fields and ``Guard.usage`` following them; notation that does not
parse leaves a token's client on its tier (logged once) and stops an API keys file at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard import APIKey, APIKeys, Guard, LimitConfig
from distillguard.errors import ConfigurationError
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import Harness, chat_body

pytestmark = [pytest.mark.timeout(30)]


def statuses(h: Harness, token: str, n: int) -> list[int]:
    return [h.call(chat_body(), token=token)[0] for _ in range(n)]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_a_token_claim_sets_the_clients_windows(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(
        jwt=jwt_config(limits_claim="rate_limit"),
        limits=LimitConfig(default="10/minute", tiers={"pro": "20/minute"}),
    )
    h = Harness(kind, guard)
    try:
        contract = make_token(sub="acme", tier="pro", rate_limit="3/minute;100/day")
        assert statuses(h, contract, 4) == [200, 200, 200, 429]
        _, headers, _ = h.call(chat_body(), token=contract)
        assert headers["ratelimit-policy"] == '"3-per-1-minute";q=3;w=60, "100-per-1-day";q=100;w=86400'
        assert {w.policy: w.used for w in guard.usage("acme", tier="pro", limits="3/minute;100/day")} == {
            "3-per-1-minute": 3,
            "100-per-1-day": 3,
        }
        plain = make_token(sub="bob", tier="pro")  # no claim: the tier's windows
        assert statuses(h, plain, 1) == [200]
        assert h.call(chat_body(), token=plain)[1]["ratelimit-policy"] == '"20-per-1-minute";q=20;w=60'
        with caplog.at_level("WARNING", logger="distillguard"):
            odd = make_token(sub="carol", rate_limit="lots per hour")
            assert statuses(h, odd, 3) == [200, 200, 200]
            assert h.call(chat_body(), token=odd)[1]["ratelimit-policy"] == '"10-per-1-minute";q=10;w=60'
        assert len([r for r in caplog.records if "own limits are not valid" in r.getMessage()]) == 1
    finally:
        h.close()


def test_the_claim_is_ignored_unless_configured() -> None:
    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="10/minute"))
    h = Harness("wsgi", guard)
    token = make_token(sub="acme", rate_limit="1/minute")
    assert statuses(h, token, 2) == [200, 200]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_an_api_key_sets_the_clients_windows(kind: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    doc = {APIKeys.digest("sk-contract"): {"client": "acme", "tier": "pro", "limits": "2/minute"}}
    keys_file.write_text(json.dumps(doc))
    guard = Guard(jwt=None, api_keys=APIKeys.from_file(keys_file), limits=LimitConfig(default="10/minute"))
    h = Harness(kind, guard)
    try:
        assert statuses(h, "sk-contract", 3) == [200, 200, 429]
    finally:
        h.close()
    keys_file.write_text(json.dumps({APIKeys.digest("sk-x"): {"client": "x", "limits": "lots"}}))
    with pytest.raises(ConfigurationError, match="invalid limit string"):
        APIKeys.from_file(keys_file)
    keys_file.write_text(json.dumps({APIKeys.digest("sk-x"): {"client": "x", "limits": 5}}))
    with pytest.raises(ConfigurationError, match="'limits' must be a string"):
        APIKeys.from_file(keys_file)
    with pytest.raises(ConfigurationError, match="at least one window"):
        APIKey(client_id="x", limits=" ")

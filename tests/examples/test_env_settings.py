"""``distillguard.settings``: DISTILLGUARD_* variables into a Guard, and the examples' startup."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from examples.make_token import main as make_token_main, mint_token

from distillguard import AuthenticationError, ConfigurationError, Policy
from distillguard.detectors import ENTRY_POINT_GROUP
from distillguard.errors import PluginError
from distillguard.query import parse_query
from distillguard.replay import Thresholds
from distillguard.settings import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DEV_SECRET,
    guard_from_env,
    registered_detectors,
    settings_from_env,
)
from distillguard.telemetry import hash_identifier
from tests.examples.conftest import ENV
from tests.helpers import keys as key_pairs, make_token

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_warn_and_accept_dev_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """With nothing set, the dev defaults apply, a warning names them, and dev tokens verify."""
    with caplog.at_level(logging.WARNING, logger="distillguard.settings"):
        guard = guard_from_env({"DISTILLGUARD_DETECTORS": ""})
    [record] = [r for r in caplog.records if r.name == "distillguard.settings"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "DEVELOPMENT" in message and "DISTILLGUARD_JWT_SECRET" in message and DEV_ISSUER in message
    assert DEV_SECRET not in caplog.text
    assert guard.verifier is not None
    identity = guard.verifier.verify(mint_token("alice", tier="free", environ={}))
    assert (identity.client_id, identity.tier) == ("alice", "free")
    assert guard.verifier.config.issuer == DEV_ISSUER
    assert guard.verifier.config.audience == DEV_AUDIENCE
    assert guard.plan.config.default == "60/minute;1000/day"
    assert guard.plan.config.storage_uri == "memory://"
    assert not guard.policy.shadow
    assert guard.policy.shared_state
    assert guard.max_body_bytes == 1_048_576


def test_custom_values_take_effect(caplog: pytest.LogCaptureFixture) -> None:
    """Every variable reaches the guard, and no development warning is logged."""
    environ = {
        **ENV,
        "DISTILLGUARD_LIMITS": "5/second;50/hour",
        "DISTILLGUARD_STORAGE_URI": "memory://?x=1",
        "DISTILLGUARD_SHADOW": "yes",
        "DISTILLGUARD_SHARED_STATE": "false",
        "DISTILLGUARD_TIER_DETECTION": " partner = shadow, internal=off ,",
        "DISTILLGUARD_MAX_BODY_BYTES": "4096",
    }
    with caplog.at_level(logging.WARNING):
        guard = guard_from_env(environ)
    assert not [r for r in caplog.records if r.name == "distillguard.settings"]
    assert guard.verifier is not None
    identity = guard.verifier.verify(mint_token("bob", environ=environ))
    assert identity.client_id == "bob"
    assert identity.tenant == ENV["DISTILLGUARD_JWT_ISSUER"]
    with pytest.raises(AuthenticationError):
        guard.verifier.verify(mint_token("bob", environ={}))  # a dev token is not accepted
    assert guard.plan.config.default == "5/second;50/hour"
    assert [c.policy for c in guard.plan.checks_for(identity)] == ["5-per-1-second", "50-per-1-hour"]
    assert guard.plan.config.storage_uri == "memory://?x=1"
    assert guard.policy.shadow
    assert not guard.policy.shared_state
    assert guard.policy.tier_detection == {"partner": "shadow", "internal": "off"}
    assert guard.max_body_bytes == 4096
    assert guard.detectors == ()


def test_overrides_replace_environment() -> None:
    """Keyword overrides win over the variables."""
    policy = Policy(flag=0.3)
    guard = guard_from_env({**ENV, "DISTILLGUARD_SHADOW": "true"}, policy=policy, max_body_bytes=10)
    assert guard.policy is policy
    assert guard.max_body_bytes == 10


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        pytest.param("DISTILLGUARD_LIMITS", "lots", "invalid limit string", id="limits"),
        pytest.param("DISTILLGUARD_LIMITS", "10/fortnight", "invalid limit string", id="limits-unit"),
        pytest.param("DISTILLGUARD_STORAGE_URI", "localhost:6379", "storage URI", id="storage"),
        pytest.param("DISTILLGUARD_SHADOW", "maybe", "true or false", id="shadow"),
        pytest.param("DISTILLGUARD_SHARED_STATE", "sometimes", "true or false", id="shared-state"),
        pytest.param("DISTILLGUARD_TIER_DETECTION", "partner=quiet", "tier=enforce", id="tier-mode"),
        pytest.param("DISTILLGUARD_TIER_DETECTION", "partner", "tier=enforce", id="tier-no-mode"),
        pytest.param("DISTILLGUARD_MAX_BODY_BYTES", "1MB", "integer", id="body-not-int"),
        pytest.param("DISTILLGUARD_MAX_BODY_BYTES", "0", "positive", id="body-zero"),
        pytest.param("DISTILLGUARD_JWT_SECRET", "short", "at least 32 bytes", id="short-secret"),
        pytest.param("DISTILLGUARD_ENV", "staging", "development or production", id="env"),
    ],
)
def test_invalid_values_fail_fast(name: str, value: str, match: str) -> None:
    """An invalid variable raises ConfigurationError when the guard is built."""
    with pytest.raises(ConfigurationError, match=match):
        guard_from_env({**ENV, name: value})


def test_unknown_detector_name() -> None:
    """A name that no installed package registers raises PluginError naming it."""
    with pytest.raises(PluginError) as caught:
        guard_from_env({**ENV, "DISTILLGUARD_DETECTORS": "no_such_detector"})
    assert caught.value.name == "no_such_detector"


def test_detectors_default_to_every_registered_one() -> None:
    """Unset ``DISTILLGUARD_DETECTORS`` means every entry point in the group but the built-in
    opt-in ones (``campaign``, ``semantic_coverage``); empty means none."""
    names = sorted(
        {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} - {"campaign", "semantic_coverage"}
    )
    assert "near_duplicate" in names and "semantic_coverage" not in registered_detectors()
    assert list(registered_detectors()) == names
    environ = {k: v for k, v in ENV.items() if k != "DISTILLGUARD_DETECTORS"}
    assert list(settings_from_env(environ).detectors) == names
    assert settings_from_env({**ENV, "DISTILLGUARD_DETECTORS": " a , b,, "}).detectors == ("a", "b")
    assert settings_from_env(ENV).detectors == ()


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"DISTILLGUARD_ENV": "production"}, id="nothing-set"),
        pytest.param(
            {**ENV, "DISTILLGUARD_ENV": "production", "DISTILLGUARD_JWT_SECRET": DEV_SECRET}, id="dev-secret"
        ),
        pytest.param(
            {**ENV, "DISTILLGUARD_ENV": "Production", "DISTILLGUARD_JWT_AUDIENCE": ""}, id="missing-audience"
        ),
    ],
)
def test_production_refuses_development_defaults(environ: dict[str, str]) -> None:
    """Under ``DISTILLGUARD_ENV=production`` no development default is used silently."""
    with pytest.raises(ConfigurationError, match="production"):
        guard_from_env(environ)
    with pytest.raises(ConfigurationError):
        mint_token("alice", environ=environ)


def test_production_with_real_settings() -> None:
    """Production with all three JWT variables set builds a guard."""
    guard = guard_from_env({**ENV, "DISTILLGUARD_ENV": "production"})
    assert settings_from_env({**ENV, "DISTILLGUARD_ENV": "production"}).dev_defaults == ()
    assert guard.verifier is not None


def test_make_token_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m examples.make_token`` prints a token the environment's guard accepts."""
    for key in list(os.environ):
        if key.startswith("DISTILLGUARD_"):
            monkeypatch.delenv(key)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    assert make_token_main(["--sub", "carol", "--tier", "pro", "--scope", "chat", "--scope", "embed"]) == 0
    token = capsys.readouterr().out.strip()
    guard = guard_from_env(ENV)
    assert guard.verifier is not None
    identity = guard.verifier.verify(token)
    assert (identity.client_id, identity.tier, identity.scopes) == (
        "carol",
        "pro",
        frozenset({"chat", "embed"}),
    )
    monkeypatch.setenv("DISTILLGUARD_ENV", "production")
    monkeypatch.delenv("DISTILLGUARD_JWT_SECRET")
    assert make_token_main(["--sub", "carol"]) == 2
    assert "DISTILLGUARD_JWT_SECRET" in capsys.readouterr().err


def _start(command: list[str], extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env.update(extra_env)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", "0"], id="uvicorn"
        ),
        pytest.param([sys.executable, "-m", "flask", "--app", "examples.flask_app", "routes"], id="flask"),
    ],
)
def test_invalid_limits_stop_the_examples_at_startup(command: list[str]) -> None:
    """``DISTILLGUARD_LIMITS=lots`` stops the app at startup with a ConfigurationError."""
    result = _start(command, {"DISTILLGUARD_LIMITS": "lots"})
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr
    assert "invalid limit string 'lots'" in result.stderr


@pytest.mark.slow
def test_flask_example_starts_on_defaults_and_says_so() -> None:
    """With no variables the Flask example loads, logs the development warning and serves its routes."""
    result = _start([sys.executable, "-m", "flask", "--app", "examples.flask_app", "routes"], {})
    assert result.returncode == 0, result.stderr
    assert "/v1/chat/completions" in result.stdout and "/healthz" in result.stdout
    assert "DEVELOPMENT defaults in use" in result.stderr
    assert DEV_SECRET not in result.stderr + result.stdout


def test_settings_use_the_risk_policy() -> None:
    """Guards built from the environment decide with the risk policy (decay, throttle, penalty
    box), as the offline replay does, in shadow mode too."""
    guard = guard_from_env({"DISTILLGUARD_DETECTORS": ""})
    assert guard.risk is not None and guard.policy.risk is not None
    shadow = guard_from_env({"DISTILLGUARD_DETECTORS": "", "DISTILLGUARD_SHADOW": "true"})
    assert shadow.policy.shadow and shadow.risk is not None


def _verify(guard: Any, token: str) -> str:
    """The client id ``guard`` verifies ``token`` as."""
    assert guard.verifier is not None
    return str(guard.verifier.verify(token).client_id)


def _signed(keys: Any, **headers: Any) -> str:
    return make_token(
        key=keys.rsa,
        alg="RS256",
        headers=headers,
        iss=ENV["DISTILLGUARD_JWT_ISSUER"],
        aud=ENV["DISTILLGUARD_JWT_AUDIENCE"],
    )


def test_keys_from_a_jwks_url_or_a_public_key_file(tmp_path: Path) -> None:
    """``DISTILLGUARD_JWKS_URL`` or ``DISTILLGUARD_JWT_PUBLIC_KEY_FILE`` replace the secret (RS256
    by default, ``DISTILLGUARD_JWT_ALGORITHMS`` otherwise), also in production; an HS256 token
    is then refused."""
    from tests.identity.conftest import JWKSServer, to_jwk

    keys = key_pairs()
    base = {k: v for k, v in ENV.items() if k != "DISTILLGUARD_JWT_SECRET"} | {
        "DISTILLGUARD_ENV": "production"
    }
    server = JWKSServer()
    try:
        server.set_keys([to_jwk(keys.rsa, "rsa")])
        guard = guard_from_env({**base, "DISTILLGUARD_JWKS_URL": server.url})
        assert guard.verifier is not None and guard.verifier.prefetch_keys(5.0)
        assert _verify(guard, _signed(keys, kid="rsa")) == "client-1"
        hs = mint_token("alice", environ=ENV)
        with pytest.raises(AuthenticationError):
            guard.verifier.verify(hs)
    finally:
        server.close()
    pem = tmp_path / "public.pem"
    pem.write_bytes(keys.rsa.public_pem)
    guard = guard_from_env(
        {**base, "DISTILLGUARD_JWT_PUBLIC_KEY_FILE": str(pem), "DISTILLGUARD_JWT_ALGORITHMS": "RS256, PS256"}
    )
    assert _verify(guard, _signed(keys)) == "client-1"
    assert settings_from_env({**base, "DISTILLGUARD_JWT_PUBLIC_KEY_FILE": str(pem)}).dev_defaults == ()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        pytest.param(
            {"DISTILLGUARD_JWKS_URL": "https://idp.example/jwks"}, "only one of", id="secret-and-jwks"
        ),
        pytest.param(
            {"DISTILLGUARD_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, "only one of", id="secret-and-file"
        ),
        pytest.param({"DISTILLGUARD_TIER_LIMITS": "pro=600/minute"}, "JSON object", id="tiers-not-json"),
        pytest.param({"DISTILLGUARD_TIER_LIMITS": '{"pro": 600}'}, "JSON object", id="tiers-not-strings"),
        pytest.param(
            {"DISTILLGUARD_TIER_LIMITS": '{"pro": "lots"}'}, "invalid limit string", id="tiers-bad-limits"
        ),
        pytest.param(
            {"DISTILLGUARD_OUTAGE": "panic"}, "local_fallback, fail_open or fail_closed", id="outage"
        ),
        pytest.param({"DISTILLGUARD_JWT_ALGORITHMS": "none"}, "none", id="alg-none"),
        pytest.param({"DISTILLGUARD_RATELIMIT_HEADERS": "x-rate"}, "ietf, openai, both or off", id="headers"),
    ],
)
def test_invalid_key_and_limit_settings_fail_fast(extra: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        guard_from_env({**ENV, **extra})


def test_an_unreadable_public_key_file_fails_fast() -> None:
    environ = {k: v for k, v in ENV.items() if k != "DISTILLGUARD_JWT_SECRET"}
    with pytest.raises(ConfigurationError, match="cannot be read"):
        guard_from_env({**environ, "DISTILLGUARD_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem"})


def test_tier_limits_and_the_outage_policy_reach_the_limits() -> None:
    """``DISTILLGUARD_TIER_LIMITS`` gives each tier its windows (the others keep
    ``DISTILLGUARD_LIMITS``); ``DISTILLGUARD_OUTAGE`` the storage outage policy."""
    guard = guard_from_env(
        {
            **ENV,
            "DISTILLGUARD_TIER_LIMITS": '{"pro": "600/minute;10000/day"}',
            "DISTILLGUARD_OUTAGE": "fail_closed",
        }
    )
    config = guard.plan.config
    assert config.tiers == {"pro": "600/minute;10000/day"} and config.outage == "fail_closed"
    pro = guard.plan.checks_for(
        guard.verifier.verify(mint_token("p", environ=ENV, tier="pro")), "/v1/chat/completions", None
    )  # type: ignore[union-attr]
    assert sorted(c.item.amount for c in pro) == [600, 10000]
    free = guard.plan.checks_for(
        guard.verifier.verify(mint_token("f", environ=ENV)), "/v1/chat/completions", None
    )  # type: ignore[union-attr]
    assert [c.item.amount for c in free] == [1000]


@pytest.mark.parametrize(
    ("value", "headers", "style"),
    [(None, True, "ietf"), ("openai", True, "openai"), ("BOTH", True, "both"), ("off", False, "ietf")],
)
def test_ratelimit_headers_setting(value: str | None, headers: bool, style: str) -> None:
    """``DISTILLGUARD_RATELIMIT_HEADERS`` picks the quota fields (IETF by default), or none."""
    environ = dict(ENV) if value is None else {**ENV, "DISTILLGUARD_RATELIMIT_HEADERS": value}
    config = guard_from_env(environ).plan.config
    assert (config.headers, config.header_style) == (headers, style)


RULES = """[
  {"name": "out", "limits": "200000/day", "unit": "output_tokens", "tiers": ["free"]},
  {"name": "spend", "limits": "50/day", "unit": "cost", "headers": false,
   "prices": {"*": {"input": 2.5, "output": 10}, "mini": {"input": 0.15, "output": 0.6}}}
]"""


def test_rules_concurrency_and_failed_authentication_windows_reach_the_limits() -> None:
    """``DISTILLGUARD_RULES`` adds token and cost windows (what a gateway configured by
    environment has no other way to set); the concurrency caps and the failed-authentication
    windows reach the limit configuration."""
    guard = guard_from_env(
        {
            **ENV,
            "DISTILLGUARD_RULES": RULES,
            "DISTILLGUARD_CONCURRENCY": "4",
            "DISTILLGUARD_TIER_CONCURRENCY": '{"free": 1}',
            "DISTILLGUARD_AUTH_FAILURES": "20/minute;100/hour",
        }
    )
    config = guard.plan.config
    assert [(r.name, r.unit, r.headers) for r in config.rules] == [
        ("out", "output_tokens", True),
        ("spend", "cost", False),
    ]
    assert (config.concurrency, dict(config.concurrency_tiers)) == (4, {"free": 1})
    assert config.auth_failures == "20/minute;100/hour"
    body = (
        b'{"model": "mini", "messages": [{"role": "user", "content": "'
        + b"x" * 400
        + b'"}], "max_tokens": 1000}'
    )
    identity = guard.verifier.verify(mint_token("f", environ=ENV, tier="free"))  # type: ignore[union-attr]
    checks = {c.policy: c for c in guard.plan.checks_for(identity, "/v1/chat/completions", parse_query(body))}
    assert checks["out-200000-per-1-day"].cost == 1000
    spend = checks["spend-50-per-1-day"]
    assert (spend.item.amount, spend.cost) == (50_000_000, 100 * 0.15 + 1000 * 0.6)  # micros at mini's price


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        pytest.param({"DISTILLGUARD_RULES": '{"name": "x"}'}, r"RULES must be a JSON array", id="not-array"),
        pytest.param({"DISTILLGUARD_RULES": '["x"]'}, r"RULES\[0\] must be a JSON object", id="not-object"),
        pytest.param(
            {"DISTILLGUARD_RULES": '[{"name": "x", "limits": "1/day", "tier": ["free"]}]'},
            r"RULES\[0\]: unknown fields \['tier'\]",
            id="misspelt-field",
        ),
        pytest.param({"DISTILLGUARD_RULES": '[{"name": "x"}]'}, r"'limits' is required", id="no-limits"),
        pytest.param(
            {"DISTILLGUARD_RULES": '[{"name": "x", "limits": "1/day", "tiers": "free"}]'},
            r"RULES\[0\]: 'tiers' has the wrong type",
            id="tiers-not-list",
        ),
        pytest.param(
            {"DISTILLGUARD_RULES": '[{"name": "x", "limits": "1/day", "unit": "cost"}]'},
            r"RULES\[0\]: LimitRule 'x': a cost rule needs a price",
            id="cost-without-prices",
        ),
        pytest.param(
            {
                "DISTILLGUARD_RULES": '[{"name": "x", "limits": "1/day", "unit": "cost",'
                ' "prices": {"*": [1, 2]}}]'
            },
            r"RULES\[0\]\.prices\['\*'\] must be",
            id="price-not-object",
        ),
        pytest.param(
            {
                "DISTILLGUARD_RULES": '[{"name": "x", "limits": "1/day", "unit": "cost",'
                ' "prices": {"*": {"input": -1, "output": 2}}}]'
            },
            r"prices\['\*'\]: Price sides must be numbers from 0",
            id="negative-price",
        ),
        pytest.param(
            {"DISTILLGUARD_RULES": '[{"name": "x", "limits": "lots"}]'},
            "invalid limit string",
            id="bad-limits",
        ),
        pytest.param({"DISTILLGUARD_CONCURRENCY": "0"}, "must be positive", id="concurrency-zero"),
        pytest.param(
            {"DISTILLGUARD_TIER_CONCURRENCY": '{"free": "1"}'}, "JSON object of tier to caps", id="tier-caps"
        ),
        pytest.param({"DISTILLGUARD_AUTH_FAILURES": "often"}, "invalid limit string", id="auth-failures"),
    ],
)
def test_invalid_rules_and_caps_fail_fast(extra: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        guard_from_env({**ENV, **extra})


def test_a_calibrated_thresholds_file_reaches_the_risk_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``DISTILLGUARD_THRESHOLDS_FILE`` gives the risk policy the thresholds ``distillguard
    calibrate`` wrote; thresholds of detectors the guard does not run are named in a warning."""
    path = tmp_path / "thresholds.json"
    Thresholds(detectors={"near_duplicate": 0.8, "coverage": 0.7, "not_installed": 0.6}).save(path)
    environ = {
        **ENV,
        "DISTILLGUARD_THRESHOLDS_FILE": str(path),
        "DISTILLGUARD_DETECTORS": "near_duplicate,coverage",
    }
    with caplog.at_level(logging.WARNING, logger="distillguard.settings"):
        guard = guard_from_env(environ)
    assert guard.policy.risk is not None
    assert dict(guard.policy.risk.thresholds) == {
        "near_duplicate": 0.8,
        "coverage": 0.7,
        "not_installed": 0.6,
    }
    assert "detectors this guard does not run: not_installed" in caplog.text
    assert guard_from_env(ENV).policy.risk.thresholds == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "DISTILLGUARD_THRESHOLDS_FILE: cannot read thresholds file"),
        ('{"format": "other"}', "DISTILLGUARD_THRESHOLDS_FILE: not a thresholds file"),
        (
            '{"format": "distillguard-thresholds/1", "thresholds": {"prada": 2}}',
            r"thresholds.prada must be a number in \(0, 1\)",
        ),
    ],
)
def test_a_bad_thresholds_file_fails_fast(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "thresholds.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match=match):
        guard_from_env({**ENV, "DISTILLGUARD_THRESHOLDS_FILE": str(path)})


def test_the_client_hash_key_keys_the_ids_on_spans() -> None:
    """``DISTILLGUARD_CLIENT_HASH_KEY`` keys the client-id hash the spans carry: without the key
    a known id cannot be found by hashing it."""
    key = "client-hash-key-of-32-bytes-long!"
    keyed = guard_from_env({**ENV, "DISTILLGUARD_CLIENT_HASH_KEY": key}).telemetry
    assert keyed.client_attribute("alice") == hash_identifier("alice", key.encode())
    assert guard_from_env(ENV).telemetry.client_attribute("alice") == hash_identifier("alice")
    assert keyed.client_attribute("alice") != hash_identifier("alice")
    with pytest.raises(ConfigurationError, match="16 to 64 bytes"):
        guard_from_env({**ENV, "DISTILLGUARD_CLIENT_HASH_KEY": "short"})


def test_risk_policy_settings_reach_the_risk_policy(tmp_path: Path) -> None:
    """``DISTILLGUARD_RISK`` sets the risk policy's fields (here: never block, a longer penalty
    box, boxing clients that hammer past their limits); the calibrated thresholds of
    ``DISTILLGUARD_THRESHOLDS_FILE`` come with them."""
    path = tmp_path / "thresholds.json"
    Thresholds(detectors={"coverage": 0.7}).save(path)
    risk = '{"block": null, "penalty_seconds": 7200, "box_after_refusals": 20, "weights": {"coverage": 0.5}}'
    policy = guard_from_env(
        {**ENV, "DISTILLGUARD_RISK": risk, "DISTILLGUARD_THRESHOLDS_FILE": str(path)}
    ).policy.risk
    assert policy is not None
    assert (policy.block, policy.penalty_seconds, policy.box_after_refusals) == (None, 7200, 20)
    assert dict(policy.weights) == {"coverage": 0.5} and dict(policy.thresholds) == {"coverage": 0.7}
    assert (policy.flag, policy.degrade) == (0.5, 0.75)  # the rest keeps its defaults


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("[]", "RISK must be a JSON object"),
        ('{"blok": null}', r"RISK: unknown field 'blok'"),
        ('{"thresholds": {"coverage": 0.7}}', r"unknown field 'thresholds'"),
        ('{"flag": true}', r"RISK: 'flag' has the wrong type"),
        ('{"weights": [1]}', r"'weights' has the wrong type"),
        ('{"weights": {"coverage": "high"}}', r"'weights' has the wrong type"),
        ('{"flag": 0.95}', r"RISK: risk thresholds must satisfy flag <= throttle"),
    ],
)
def test_bad_risk_settings_fail_fast(raw: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        guard_from_env({**ENV, "DISTILLGUARD_RISK": raw})


def test_the_request_log_setting_records_the_guarded_requests(tmp_path: Path) -> None:
    """``DISTILLGUARD_REQUEST_LOG`` (``{pid}`` expanded) makes the guard record each request as
    a replay line; the sample share and an unusable path are checked at startup, naming the
    variable."""
    from distillguard.request_log import RequestLog
    from tests.limiting.apps import Harness, chat_body

    env = {**ENV, "DISTILLGUARD_REQUEST_LOG": str(tmp_path / "req-{pid}.jsonl")}
    guard = guard_from_env({**env, "DISTILLGUARD_REQUEST_LOG_SAMPLE": "1"})
    log = guard.on_decision
    assert isinstance(log, RequestLog) and log.sample == 1.0
    token = make_token(
        key=ENV["DISTILLGUARD_JWT_SECRET"],
        iss=ENV["DISTILLGUARD_JWT_ISSUER"],
        aud=ENV["DISTILLGUARD_JWT_AUDIENCE"],
    )
    h = Harness("wsgi", guard)
    assert h.call(chat_body("hello there"), token=token)[0] == 200
    log.close()
    (line,) = (tmp_path / f"req-{os.getpid()}.jsonl").read_text().splitlines()
    assert '"client": "client-1"' in line and '"content": "hello there"' in line
    sampled = guard_from_env({**env, "DISTILLGUARD_REQUEST_LOG_SAMPLE": "0.25"}).on_decision
    assert isinstance(sampled, RequestLog) and sampled.sample == 0.25
    assert guard_from_env(ENV).on_decision is None
    for sample in ("0", "1.5", "half"):
        with pytest.raises(ConfigurationError, match="DISTILLGUARD_REQUEST_LOG_SAMPLE"):
            settings_from_env({**env, "DISTILLGUARD_REQUEST_LOG_SAMPLE": sample})
    with pytest.raises(ConfigurationError, match=r"DISTILLGUARD_REQUEST_LOG: .*no directory"):
        guard_from_env({**ENV, "DISTILLGUARD_REQUEST_LOG": str(tmp_path / "nowhere" / "r.jsonl")})


def test_refund_server_errors_setting_reaches_the_limits() -> None:
    assert guard_from_env(ENV).plan.config.refund_server_errors is False
    on = guard_from_env({**ENV, "DISTILLGUARD_REFUND_SERVER_ERRORS": "true"})
    assert on.plan.config.refund_server_errors is True
    with pytest.raises(ConfigurationError, match="DISTILLGUARD_REFUND_SERVER_ERRORS"):
        settings_from_env({**ENV, "DISTILLGUARD_REFUND_SERVER_ERRORS": "perhaps"})


def test_the_limits_claim_setting_reaches_the_verifier() -> None:
    guard = guard_from_env({**ENV, "DISTILLGUARD_LIMITS_CLAIM": "rate_limit"})
    assert guard.verifier is not None
    token = make_token(
        key=ENV["DISTILLGUARD_JWT_SECRET"],
        iss=ENV["DISTILLGUARD_JWT_ISSUER"],
        aud=ENV["DISTILLGUARD_JWT_AUDIENCE"],
        rate_limit="5/minute",
    )
    assert guard.verifier.verify(token).limits == "5/minute"
    assert guard_from_env(ENV).verifier.verify(token).limits is None  # type: ignore[union-attr]

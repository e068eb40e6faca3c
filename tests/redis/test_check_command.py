"""``distillguard check``: the effective settings without secrets, and one check per dependency,
against a real redis-server and a real JWKS server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from distillguard.cli import main
from distillguard.cli.check import redacted_uri
from distillguard.settings import DEV_SECRET
from tests.helpers import keys as make_keys
from tests.identity.conftest import JWKSServer, to_jwk
from tests.servers import RedisServer, free_port, serve_in_thread

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

SECRET = "check-command-secret-of-at-least-32-bytes"
WATERMARK = "check-command-watermark-key"


def check(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    status = main(["check", "--json", "--timeout", "2"])
    out = capsys.readouterr()
    return status, json.loads(out.out), out.out + out.err


def test_a_sound_configuration_passes_and_shows_no_secret(
    env: Any,
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:otlp-secret@collector:4318")
    env(
        JWT_SECRET=SECRET,
        JWT_ISSUER="https://idp.example",
        JWT_AUDIENCE="model-api",
        STORAGE_URI=redis_server.url,
        WATERMARK_KEY=WATERMARK,
        RATELIMIT_HEADERS="both",
        RULES='[{"name": "spend", "limits": "50/day", "unit": "cost",'
        ' "prices": {"*": {"input": 1, "output": 4}}}]',
        CONCURRENCY="4",
        AUTH_FAILURES="20/minute",
        LIMITS_CLAIM="rate_limit",
        ERROR_FORMAT="openai",
        REFUND_SERVER_ERRORS="true",
        REQUEST_LOG=str(tmp_path / "requests-{pid}.jsonl"),
        REQUEST_LOG_SAMPLE="0.25",
    )
    status, doc, text = check(capsys)
    assert status == 0 and doc["ok"] is True
    assert [(c["name"], c["ok"]) for c in doc["checks"]] == [("jwt keys", True), ("limit storage", True)]
    assert "answers" in doc["checks"][1]["detail"]
    assert doc["checks"][1]["detail"].endswith("replies parsed by hiredis")  # the redis extra's
    settings = doc["settings"]
    assert settings["jwt"]["issuer"] == "https://idp.example"
    assert settings["limits"]["storage"] == redis_server.url and settings["limits"]["headers"] == "both"
    assert settings["limits"]["rules"] == ["spend: 50/day (cost)"]
    assert (settings["limits"]["concurrency"], settings["limits"]["auth_failures"]) == (4, "20/minute")
    assert settings["watermark"] is True and "near_duplicate" in settings["detectors"]
    assert settings["thresholds"] == "the detectors' own"
    assert settings["client_hash"] == "unkeyed" and settings["risk"] == "the defaults"
    assert settings["otlp"] == "http://user:***@collector:4318"
    assert settings["jwt"]["limits_claim"] == "rate_limit" and settings["error_format"] == "openai"
    assert settings["limits"]["refund_server_errors"] is True
    assert settings["request_log"] == f"{tmp_path}/requests-{{pid}}.jsonl (sample 0.25)"
    assert SECRET not in text and WATERMARK not in text and "otlp-secret" not in text


def test_an_unreachable_storage_fails_with_its_password_hidden(
    env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    env(JWT_SECRET=SECRET, STORAGE_URI=f"redis://app:hunter2-password@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    status, doc, text = check(capsys)
    assert time.monotonic() - started < 10
    assert status == 1 and doc["ok"] is False
    storage = doc["checks"][1]
    assert storage["ok"] is False and "does not answer" in storage["detail"]
    assert "hunter2" not in text and "app:***@127.0.0.1" in text


def test_the_gateways_model_server_is_asked_for_any_answer(
    env: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``DISTILLGUARD_UPSTREAM`` set, the model server must answer HTTP (a 404 on its base
    path counts); a closed port fails the check (status 1), its password hidden. A proxy in
    the environment is not used: the gateway calls the model server directly."""

    async def model_server(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not here"})

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # would refuse
    with serve_in_thread(model_server) as url:
        env(JWT_SECRET=SECRET, UPSTREAM=url.replace("http://", "http://vllm:s3cret@"))
        status, doc, text = check(capsys)
    assert status == 0, doc
    upstream = doc["checks"][2]
    assert upstream["name"] == "upstream" and upstream["ok"] is True
    assert "answers (HTTP 404" in upstream["detail"] and "vllm:***@" in upstream["detail"]
    env(UPSTREAM=f"http://vllm:s3cret@127.0.0.1:{free_port()}")
    status, doc, text = check(capsys)
    assert status == 1 and doc["checks"][2]["ok"] is False
    assert "does not answer" in doc["checks"][2]["detail"] and "s3cret" not in text


def test_a_jwks_url_is_fetched(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = JWKSServer()
    try:
        server.set_keys([to_jwk(make_keys().rsa, "k1")])
        env(JWKS_URL=server.url, JWT_ISSUER="https://idp.example", JWT_AUDIENCE="model-api")
        status, doc, _ = check(capsys)
        assert status == 0 and doc["checks"][0]["ok"] is True
        assert doc["settings"]["jwt"]["keys"] == f"JWKS {server.url}"
        assert doc["settings"]["jwt"]["algorithms"] == ["RS256"]
        server.mode = "503"
        env(JWKS_URL=server.url.replace("jwks.json", "other.json"))  # a fresh key set to fetch
        status, doc, _ = check(capsys)
        assert status == 1 and doc["checks"][0]["ok"] is False
        assert "no key set" in doc["checks"][0]["detail"]
    finally:
        server.close()


def test_a_configuration_error_exits_2(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    env(JWT_SECRET=SECRET, LIMITS="lots")
    status, doc, _ = check(capsys)
    assert status == 2 and doc["ok"] is False and "invalid limit string" in doc["error"]
    env(LIMITS="60/minute", ENV="production", JWT_SECRET=DEV_SECRET)
    assert check(capsys)[0] == 2


def test_the_text_output_names_each_check(env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    env(JWT_SECRET=SECRET)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "ok   jwt keys: configured keys" in out and "ok   limit storage: memory://" in out
    assert SECRET not in out


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
        ("rediss://user:p%40ss@cache.example:6380/1", "rediss://user:***@cache.example:6380/1"),
        (
            "redis+sentinel://:pw@s1:26379,s2:26379/mymaster",
            "redis+sentinel://:***@s1:26379,s2:26379/mymaster",
        ),
    ],
)
def test_storage_uris_are_shown_without_their_password(uri: str, shown: str) -> None:
    assert redacted_uri(uri) == shown


def test_the_storage_check_names_the_reply_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a Redis URI the check says whether redis-py parses replies with hiredis, and how to
    get it when it does not; other storages get no such line."""
    from distillguard.cli.check import _parser

    assert _parser("redis://127.0.0.1:6379/0") == "; replies parsed by hiredis"
    assert _parser("async+redis+sentinel://h:26379/m") == "; replies parsed by hiredis"
    assert _parser("memory://") == "" and _parser("valkey://h:6379") == ""
    monkeypatch.setattr("redis.utils.HIREDIS_AVAILABLE", False)
    assert "install hiredis" in _parser("redis://127.0.0.1:6379/0")

"""JWKSKeys on its own, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import warnings
from typing import Any

import jwt
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from distillguard import ConfigurationError, JWKSKeys
from distillguard.identity import KeyResolver, KeysUnavailable
from tests.helpers import KeyPair, keys as keys_module, make_token
from tests.identity.conftest import JWKSServer, to_jwk


def wait_until(condition: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://idp.example.com/jwks.json",
        "http://idp.example.com/jwks.json",
        "http://10.0.0.1/jwks.json",
        "https:///jwks.json",
        "https://user:pw@idp.example.com/jwks.json",
        "gopher://127.0.0.1/x",
        "jwks.json",
    ],
)
def test_non_https_urls_are_refused_at_construction(url: str) -> None:
    """file://, ftp://, plain http to a remote host, no host or credentials: ConfigurationError."""
    with pytest.raises(ConfigurationError):
        JWKSKeys(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/.well-known/jwks.json",
        "http://127.0.0.1:1/j",
        "http://localhost/j",
        "http://[::1]/j",
    ],
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    """https anywhere, http only for loopback hosts; construction opens no connection."""
    keys = JWKSKeys(url)
    assert keys.status().fetches == 0
    keys.close()


@pytest.mark.parametrize(
    "options",
    [
        {"lifespan": 0},
        {"lifespan": 600, "max_stale": 300},
        {"timeout": 0},
        {"timeout": 60},
        {"cooldown": -1},
        {"max_unknown_kids": 0},
        {"algorithms": ["HS256"]},
        {"algorithms": []},
        {"algorithms": ["none"]},
    ],
)
def test_bad_settings_fail_fast(options: dict[str, Any]) -> None:
    """Invalid lifespans, timeouts, caches or symmetric algorithms raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        JWKSKeys("https://idp.example.com/jwks.json", **options)


# -- serving keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa", "ec", "ed25519"])
def test_prefetch_then_key_for_returns_a_working_key(
    jwks_server: JWKSServer, make_keys: Any, keys: Any, which: str
) -> None:
    """After prefetch, key_for(kid, alg) answers from memory with a key that verifies the token."""
    pair: KeyPair = getattr(keys, which)
    jwks_server.set_keys([to_jwk(pair, "k1")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    key = resolver.key_for("k1", pair.alg)
    token = make_token(key=pair, headers={"kid": "k1"})
    claims = jwt.decode(token, key, algorithms=[pair.alg], audience="api")
    assert claims["sub"] == "client-1"
    assert resolver.status().ready and resolver.status().kids == {"k1"}
    assert jwks_server.hits == 1
    assert isinstance(resolver, KeyResolver)


def test_prefetch_after_start_reuses_the_first_fetch(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """start() then prefetch(): the fetch start() began is the one prefetch waits for."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url).start()
    assert wait_until(lambda: resolver.status().fetches == 1)
    assert resolver.prefetch(timeout=3)
    assert jwks_server.hits == 1


def test_prefetch_after_a_failed_first_fetch_tries_again(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """When the first fetch already failed, prefetch() runs a new one rather than report the old."""
    jwks_server.mode = "503"
    resolver = make_keys(jwks_server.url).start()
    assert wait_until(lambda: resolver.status().fetches == 1)
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    assert resolver.prefetch(timeout=3)
    assert jwks_server.hits == 2


def test_one_key_one_algorithm(jwks_server: JWKSServer, make_keys: Any, keys: Any) -> None:
    """A JWK with alg RS256 never serves RS384, PS256 or HS256, and asking does not refetch."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    assert resolver.key_for("k1", "RS256") is not None
    for alg in ("RS384", "PS256", "HS256", "ES256"):
        assert resolver.key_for("k1", alg) is None
    time.sleep(0.05)
    assert jwks_server.hits == 1


def test_rsa_key_without_alg_serves_the_configured_rsa_algorithms(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """Without ``alg`` an RSA JWK serves RSA algorithms only, narrowed by ``algorithms``."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1", alg=None)])
    loose = make_keys(jwks_server.url)
    pinned = make_keys(jwks_server.url, algorithms=["RS256"])
    assert loose.prefetch(timeout=3) and pinned.prefetch(timeout=3)
    assert loose.key_for("k1", "PS256") is not None
    assert loose.key_for("k1", "ES256") is None
    assert pinned.key_for("k1", "RS256") is not None
    assert pinned.key_for("k1", "PS256") is None


def test_unusable_jwks_members_are_ignored(jwks_server: JWKSServer, make_keys: Any, keys: Any) -> None:
    """use=enc, key_ops without verify, oct keys, alg/kty mismatch and junk entries are skipped."""
    jwks_server.set_keys(
        [
            to_jwk(keys.rsa, "enc", use="enc"),
            to_jwk(keys.rsa, "wrap", key_ops=["wrapKey"]),
            {
                "kty": "oct",
                "kid": "hmac",
                "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA",
                "alg": "HS256",
            },
            to_jwk(keys.rsa, "mismatch", alg="ES256"),
            to_jwk(keys.rsa, "unknown-alg", alg="RSA-OAEP"),
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
            to_jwk(keys.rsa, 17),
            to_jwk(keys.ec, "good"),
        ]
    )
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    assert resolver.status().kids == {"good"}
    assert resolver.key_for("hmac", "HS256") is None
    assert resolver.key_for("enc", "RS256") is None


def test_token_without_kid_uses_the_only_matching_key(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """No kid: the single key that serves the algorithm; none when two could."""
    jwks_server.set_keys([to_jwk(keys.rsa, "r"), to_jwk(keys.ec, "e")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    assert resolver.key_for(None, "ES256") is not None
    jwks_server.set_keys([to_jwk(keys.ec, "e1"), to_jwk(keys.ec, "e2")])
    assert resolver.refresh(wait=3)
    assert resolver.key_for(None, "ES256") is None


def test_keys_pyjwt_would_refuse_are_left_out_and_logged_once(
    jwks_server: JWKSServer, make_keys: Any, keys: Any, rsa_1024: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    """An RSA-1024 key and an EC key whose alg is for another curve are left out of the set; the
    good key next to them is served. One warning per left-out key names its kid and what the
    algorithm needs, never key material, and is not repeated when the same set is fetched again.
    Asking for a left-out kid does not refetch (the set has it); an unknown kid does."""
    weak = to_jwk(rsa_1024, "weak")
    wrong_curve = to_jwk(keys.ec, "curve", alg="ES384")  # a P-256 key
    jwks_server.set_keys([weak, wrong_curve, to_jwk(keys.rsa, "good")])
    resolver = make_keys(jwks_server.url, cooldown=0)
    with caplog.at_level(logging.WARNING, logger="distillguard.jwks"):
        assert resolver.prefetch(timeout=3)
        assert resolver.refresh(wait=3)
    assert resolver.status().kids == {"good"}
    assert resolver.key_for("good", "RS256") is not None
    assert resolver.key_for("weak", "RS256") is None
    assert resolver.key_for("curve", "ES384") is None
    time.sleep(0.1)
    assert jwks_server.hits == 2
    assert resolver.key_for("unknown", "RS256") is None
    assert wait_until(lambda: jwks_server.hits == 3)
    messages = [r.getMessage() for r in caplog.records if r.name == "distillguard.jwks"]
    assert len(messages) == 2, messages
    weak_message, curve_message = sorted(messages, key=lambda m: "curve" in m)
    assert "kid='weak'" in weak_message and "2048 bits" in weak_message
    assert "kid='curve'" in curve_message and "ES384 needs secp384r1" in curve_message
    for message in messages:
        assert weak["n"] not in message and wrong_curve["x"] not in message
        assert str(jwks_server.port) not in message  # the host only, not the URL


def test_a_set_of_refused_keys_only_is_a_failed_fetch(
    jwks_server: JWKSServer, make_keys: Any, keys: Any, rsa_1024: KeyPair
) -> None:
    """Only an RSA-1024 key: no key set (KeysUnavailable, last_error refused_keys); and a later
    set like it never replaces the last good one."""
    jwks_server.set_keys([to_jwk(rsa_1024, "weak")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3) is False
    assert resolver.status().last_error == "refused_keys"
    with pytest.raises(KeysUnavailable):
        resolver.key_for("weak", "RS256")
    jwks_server.set_keys([to_jwk(keys.rsa, "good")])
    assert resolver.refresh(wait=3)
    jwks_server.set_keys([to_jwk(rsa_1024, "weak")])
    assert resolver.refresh(wait=3) is False
    assert resolver.key_for("good", "RS256") is not None


# -- outages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error"), [("503", "http_503"), ("html", "invalid_json"), ("empty", "no_keys")]
)
def test_first_start_against_a_broken_endpoint_is_unavailable_not_unauthorized(
    jwks_server: JWKSServer, make_keys: Any, mode: str, error: str
) -> None:
    """503, HTML or {} at startup: prefetch fails fast and key_for raises KeysUnavailable."""
    jwks_server.mode = mode
    resolver = make_keys(jwks_server.url)
    started = time.monotonic()
    assert resolver.prefetch(timeout=3) is False
    assert time.monotonic() - started < 1.0
    with pytest.raises(KeysUnavailable) as info:
        resolver.key_for("k1", "RS256")
    assert info.value.reason == "keys_unavailable"
    assert 1 <= info.value.retry_after <= 60
    status = resolver.status()
    assert status.ready is False and status.last_error == error and status.failures >= 1


def test_redirect_is_not_followed(
    jwks_server: JWKSServer, other_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """A 302 to another host is a failed fetch; the redirect target is never contacted."""
    other_server.set_keys([to_jwk(keys.rsa, "attacker")])
    jwks_server.mode = "redirect"
    jwks_server.redirect_to = other_server.url.replace("127.0.0.1", "localhost")
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3) is False
    assert resolver.status().last_error == "redirect"
    assert jwks_server.hits == 1 and other_server.hits == 0
    with pytest.raises(KeysUnavailable):
        resolver.key_for("attacker", "RS256")


def test_a_tls_failure_is_a_failed_fetch(jwks_server: JWKSServer, make_keys: Any, keys: Any) -> None:
    """https:// to a server that does not speak TLS fails the fetch as ``tls`` (no fallback to http)."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url.replace("http://", "https://"))
    assert resolver.prefetch(timeout=3) is False
    assert resolver.status().last_error == "tls"


def test_black_hole_at_startup_never_blocks_the_caller(black_hole: str, make_keys: Any) -> None:
    """A JWKS host that never answers: key_for raises at once; the fetch times out in the background."""
    resolver = make_keys(black_hole, timeout=0.5)
    started = time.monotonic()
    assert resolver.prefetch(timeout=0.2) is False
    assert time.monotonic() - started < 0.4
    for _ in range(100):
        t0 = time.monotonic()
        with pytest.raises(KeysUnavailable):
            resolver.key_for("k1", "RS256")
        assert time.monotonic() - t0 < 0.1
    assert wait_until(lambda: resolver.status().last_error == "timeout", timeout=2.0)


def test_last_good_keys_survive_a_failed_refresh_until_max_stale(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """Stale-while-revalidate: keys keep working while refreshes fail, until max_stale; then 503."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url, lifespan=0.2, max_stale=1.5)
    assert resolver.prefetch(timeout=3)
    jwks_server.mode = "503"
    assert resolver.refresh(wait=3) is False
    assert resolver.key_for("k1", "RS256") is not None
    status = resolver.status()
    assert status.ready and status.failures >= 1 and status.last_error == "http_503"
    assert wait_until(lambda: not resolver.status().ready, timeout=3.0)
    with pytest.raises(KeysUnavailable):
        resolver.key_for("k1", "RS256")
    jwks_server.mode = "ok"
    assert resolver.refresh(wait=3)
    assert resolver.key_for("k1", "RS256") is not None


def test_refresh_runs_in_the_background_on_schedule(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """With lifespan 0.25 s the set is refetched every ~0.2 s with no request at all."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url, lifespan=0.25)
    assert resolver.prefetch(timeout=3)
    assert wait_until(lambda: jwks_server.hits >= 4, timeout=3.0)
    assert jwks_server.max_concurrent == 1


def test_the_refresher_never_moves_the_global_random_state() -> None:
    """Its jitter has its own generator: an app's (or a property test's) seeded ``random`` is
    left alone, whatever the background thread schedules."""
    import random

    from distillguard.identity._refresher import Refresher

    outcomes = iter([True, False, True, False])
    runs: list[int] = []

    def task() -> bool:
        runs.append(1)
        return next(outcomes, True)

    random.seed(1234)
    before = random.getstate()
    refresher = Refresher(task, period=0.01, cooldown=0.0, name="jitter-test")
    refresher.start()
    try:
        assert wait_until(lambda: len(runs) >= 4, timeout=5.0)
    finally:
        refresher.stop()
    assert random.getstate() == before


# -- unknown kids and rotation ---------------------------------------------------------------


def test_a_flood_of_random_kids_causes_at_most_one_fetch(
    jwks_server: JWKSServer, make_keys: Any, keys: Any
) -> None:
    """200 random kids within the cooldown: at most one extra fetch, each answered None at once."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    started = time.monotonic()
    for _ in range(200):
        assert resolver.key_for(secrets.token_hex(8), "RS256") is None
    assert time.monotonic() - started < 0.5
    time.sleep(0.2)
    assert jwks_server.hits <= 2


def test_the_negative_kid_cache_is_bounded(jwks_server: JWKSServer, make_keys: Any, keys: Any) -> None:
    """The unknown-kid cache never holds more than max_unknown_kids entries."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url, max_unknown_kids=10)
    assert resolver.prefetch(timeout=3)
    for i in range(500):
        resolver.key_for(f"kid-{i}", "RS256")
    assert len(resolver._unknown) <= 10


def test_rotation_new_kid_accepted_removed_kid_rejected(
    jwks_server: JWKSServer, make_keys: Any, keys: Any, rsa_keypair_2: KeyPair
) -> None:
    """A new kid is picked up by the refresh it triggers; a removed kid is gone after a refresh."""
    jwks_server.set_keys([to_jwk(keys.rsa, "old")])
    resolver = make_keys(jwks_server.url, cooldown=0.2)
    assert resolver.prefetch(timeout=3)
    generation = resolver.generation
    jwks_server.set_keys([to_jwk(keys.rsa, "old"), to_jwk(rsa_keypair_2, "new")])
    time.sleep(0.25)
    assert resolver.key_for("new", "RS256") is None  # unknown now; asks for a refresh
    assert wait_until(lambda: resolver.key_for("new", "RS256") is not None, timeout=3.0)
    assert resolver.generation == generation  # adding a key invalidates nothing
    jwks_server.set_keys([to_jwk(rsa_keypair_2, "new")])
    assert resolver.refresh(wait=3)
    assert resolver.key_for("old", "RS256") is None
    assert resolver.generation == generation + 1


def test_one_fetch_in_flight_even_when_everyone_asks(black_hole: str, make_keys: Any) -> None:
    """Many threads calling key_for and refresh() during a hung fetch never start a second one."""
    resolver = make_keys(black_hole, timeout=1.0, cooldown=0)
    resolver.start()

    def hammer() -> None:
        for _ in range(50):
            resolver.refresh()
            with contextlib.suppress(KeysUnavailable):
                resolver.key_for(secrets.token_hex(4), "RS256")

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the first fetch is still hanging (timeout 0.5 s): only one attempt has even finished or started
    assert resolver.status().fetches == 0
    assert wait_until(lambda: resolver.status().fetches >= 1, timeout=2.0)
    assert resolver.status().fetches <= 2


# -- telemetry and lifecycle -----------------------------------------------------------------


def test_fetch_outcomes_and_key_age_are_metrics(jwks_server: JWKSServer, keys: Any) -> None:
    """Each fetch counts under distillguard.jwks.fetches by outcome; the key age is a gauge."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = JWKSKeys(jwks_server.url, meter_provider=provider)
    try:
        assert resolver.prefetch(timeout=3)
        jwks_server.mode = "503"
        assert resolver.refresh(wait=3) is False
        data = reader.get_metrics_data()
    finally:
        resolver.close()
        provider.shutdown()
    assert data is not None
    points: dict[str, Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points[metric.name] = list(metric.data.data_points)
    outcomes = {p.attributes["outcome"]: p.value for p in points["distillguard.jwks.fetches"]}
    assert outcomes == {"ok": 1, "http_503": 1}
    (age,) = points["distillguard.jwks.age"]
    assert 0 <= age.value < 5


def test_close_stops_the_refresher(jwks_server: JWKSServer, keys: Any) -> None:
    """After close() no more fetches happen and the thread ends; the keys stay usable."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = JWKSKeys(jwks_server.url, lifespan=0.1)
    with resolver:
        assert resolver.prefetch(timeout=3)
    thread = resolver._refresher._thread
    assert thread is not None
    thread.join(timeout=1)
    assert not thread.is_alive()
    hits = jwks_server.hits
    time.sleep(0.3)
    assert jwks_server.hits == hits
    assert resolver.key_for("k1", "RS256") is not None


def test_a_forked_child_starts_its_own_refresher(jwks_server: JWKSServer, make_keys: Any, keys: Any) -> None:
    """After fork (gunicorn --preload) the child gets a new refresher thread and can refresh."""
    jwks_server.set_keys([to_jwk(keys.rsa, "k1")])
    resolver = make_keys(jwks_server.url)
    assert resolver.prefetch(timeout=3)
    jwks_server.set_keys([to_jwk(keys.rsa, "k1"), to_jwk(keys.ec, "k2")])  # served by the parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            if resolver.key_for("k1", "RS256") is not None and resolver.refresh(wait=3):
                code = 0 if resolver.key_for("k2", "ES256") is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert jwks_server.hits == 2


class _DownResolver:
    """A custom resolver whose key source is down."""

    def key_for(self, kid: str | None, alg: str) -> Any:
        raise KeysUnavailable(retry_after=7)


def test_any_resolver_raising_keys_unavailable_gets_503_with_its_retry_after(guard_factory: Any) -> None:
    """The 503 path belongs to the KeyResolver contract, not to JWKSKeys alone."""
    from distillguard.flow import evaluate
    from distillguard.request import GuardRequest
    from tests.helpers import jwt_config

    guard = guard_factory(jwt=jwt_config(algorithms=["RS256"], key=None, key_resolver=_DownResolver()))
    request = GuardRequest(
        method="GET",
        path="/v1/predict",
        authorization="Bearer " + make_token(key=keys_module().rsa, headers={"kid": "k"}),
        content_type="",
        body=b"",
        client_address="127.0.0.1",
        user_agent=None,
        timestamp=time.time(),
    )
    flow = evaluate(guard, request)
    with pytest.raises(StopIteration) as stop:
        next(flow)
    decision = stop.value.value
    assert decision.action.value == "unavailable" and decision.auth_failure == "keys_unavailable"
    assert decision.problem.status == 503 and decision.problem.code == "auth_unavailable"
    assert ("retry-after", "7") in decision.problem.headers


def test_keys_from_an_openid_issuer_through_discovery(keys: Any) -> None:
    """``JWKSKeys.from_issuer`` reads the issuer's discovery document and verifies tokens with
    the keys at its ``jwks_uri``; a document naming another issuer, no ``jwks_uri``, a
    non-https ``jwks_uri`` or an unreachable issuer fail at construction."""
    import json as json_module
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from distillguard import ConfigurationError, JWTConfig
    from distillguard.identity import JWTVerifier
    from tests.helpers import AUDIENCE, make_token
    from tests.identity.conftest import to_jwk

    documents: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json_module.dumps(documents.get(self.path, {})).encode()
            self.send_response(200 if self.path in documents else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_address[1]}/realms/main"
    try:
        documents["/realms/main/.well-known/openid-configuration"] = {
            "issuer": issuer,
            "jwks_uri": f"http://127.0.0.1:{server.server_address[1]}/certs",
        }
        documents["/certs"] = {"keys": [to_jwk(keys.rsa, "rsa")]}
        resolver = JWKSKeys.from_issuer(issuer, algorithms=["RS256"])
        try:
            assert resolver.prefetch(timeout=5)
            verifier = JWTVerifier(
                JWTConfig(algorithms=["RS256"], key_resolver=resolver, issuer=issuer, audience=AUDIENCE)
            )
            token = make_token(key=keys.rsa, alg="RS256", headers={"kid": "rsa"}, iss=issuer)
            assert verifier.verify(token).client_id == "client-1"
        finally:
            resolver.close()
        for bad in (
            {
                "issuer": "https://evil.example",
                "jwks_uri": documents["/realms/main/.well-known/openid-configuration"]["jwks_uri"],
            },
            {"issuer": issuer},
            {"issuer": issuer, "jwks_uri": "http://idp.example/certs"},
        ):
            documents["/realms/main/.well-known/openid-configuration"] = bad
            with pytest.raises(ConfigurationError):
                JWKSKeys.from_issuer(issuer)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ConfigurationError, match="cannot be fetched"):
        JWKSKeys.from_issuer(issuer, timeout=1)

"""The adapter contract: one scenario table, run against the ASGI and the WSGI middleware.

Every test here takes the ``serve`` fixture, parametrised over both adapters, so each behaviour
is proven twice through real HTTP semantics: ASGI through Starlette's ``TestClient`` on
``DistillGuardMiddleware``, WSGI through ``httpx.WSGITransport`` on ``wsgiref.validate``-checked
``DistillGuardWSGIMiddleware``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import http_sf
import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from distillguard import (
    ConfigurationError,
    DistillGuardMiddleware,
    DistillGuardWSGIMiddleware,
    Guard,
    LimitConfig,
    Policy,
)
from distillguard.telemetry import (
    ATTR_CLIENT_ID,
    ATTR_CLIENT_TENANT,
    ATTR_CLIENT_TIER,
    ATTR_DECISION,
    ATTR_DETECTOR_SCORE,
    ATTR_ERRORS,
    ATTR_LIMIT_REMAINING,
    ATTR_QUERY_FINGERPRINT,
    ATTR_SHADOW,
    EVENT_DECISION,
    hash_identifier,
)
from tests.helpers import (
    ISSUER,
    STREAM_CHUNKS,
    SUBJECT,
    EchoASGIApp,
    EchoWSGIApp,
    Keys,
    RaisingDetector,
    StaticDetector,
    assert_no_secrets,
    default_claims,
    guard_spans,
    jwt_config,
    make_token,
    raw_token,
    span_strings,
)

pytestmark = pytest.mark.timeout(60)

PROMPT = "SECRET-PROMPT distil the model, question 7"
CHAT = json.dumps(
    {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 5,
        "logit_bias": {"50256": -100},
    }
).encode()
CHAT_PATH = "/v1/chat/completions"


# -- the harness -----------------------------------------------------------------------------


def _chunked_marks_terminated(app: Any) -> Any:
    """What WSGI servers (gunicorn, waitress) do for a chunked request: mark the input stream
    as terminated so that reading it to the end is safe."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return wrapped


@dataclass
class Served:
    """An echo app behind one adapter, and an HTTP client for it."""

    adapter: str
    guard: Guard
    app: EchoASGIApp | EchoWSGIApp
    middleware: Any
    client: httpx.Client
    closers: list[Callable[[], None]] = field(default_factory=list)

    def post(
        self, path: str = CHAT_PATH, *, token: str | None = None, body: bytes = CHAT, **kw: Any
    ) -> httpx.Response:
        """POST ``body`` with ``Authorization: Bearer <token>`` when a token is given."""
        headers = dict(kw.pop("headers", {}))
        headers.setdefault("content-type", "application/json")
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.post(path, content=body, headers=headers, **kw)

    def raw_chunks(self, path: str, token: str) -> tuple[int, list[bytes]]:
        """Call the middleware directly (no HTTP client) and return the status and the body
        chunks exactly as the middleware passed them on: one per ASGI ``send`` / WSGI item."""
        if isinstance(self.client, TestClient):
            portal = self.client.portal
            assert portal is not None
            return portal.call(self._asgi_raw, path, token)
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "CONTENT_LENGTH": "0",
            "QUERY_STRING": "",
            "SCRIPT_NAME": "",
        }
        wsgiref.util.setup_testing_defaults(environ)
        status: list[str] = []
        result = wsgiref.validate.validator(self.middleware)(environ, lambda s, h, e=None: status.append(s))
        try:
            chunks = list(result)
        finally:
            result.close()  # type: ignore[attr-defined]
        return int(status[0][:3]), chunks

    async def _asgi_raw(self, path: str, token: str) -> tuple[int, list[bytes]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
        }
        messages: list[dict[str, Any]] = []
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.middleware(scope, receive, send)
        status = messages[0]["status"]
        return status, [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]


@pytest.fixture(params=["asgi", "wsgi"])
def adapter(request: pytest.FixtureRequest) -> str:
    """The adapter under test."""
    return str(request.param)


@pytest.fixture
def serve(adapter: str, guard_factory: Callable[..., Guard]) -> Iterator[Callable[..., Served]]:
    """``serve(**guard_options)``: the echo app behind ``adapter``, guarded as configured."""
    opened: list[Served] = []

    def build(**guard_options: Any) -> Served:
        guard = guard_factory(**guard_options)
        served: Served
        if adapter == "asgi":
            app = EchoASGIApp()
            middleware: Any = DistillGuardMiddleware(app, guard=guard)
            client = TestClient(middleware, base_url="http://testserver")
            client.__enter__()
            served = Served(adapter, guard, app, middleware, client)
            served.closers.append(lambda: client.__exit__(None, None, None))
        else:
            wapp = EchoWSGIApp()
            middleware = DistillGuardWSGIMiddleware(wapp, guard=guard)
            transport = httpx.WSGITransport(
                app=_chunked_marks_terminated(wsgiref.validate.validator(middleware))
            )
            client = httpx.Client(transport=transport, base_url="http://testserver")
            served = Served(adapter, guard, wapp, middleware, client)
            served.closers.append(client.close)
        opened.append(served)
        return served

    yield build
    for served in opened:
        for close in served.closers:
            close()


# -- the scenario table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: how to configure the guard, what to send, what must come back."""

    token: Callable[[Keys], str | None]
    status: int
    code: str | None = None
    guard: Callable[[Keys], dict[str, Any]] = lambda k: {}
    path: str = CHAT_PATH
    body: bytes = CHAT
    headers: dict[str, str] = field(default_factory=dict)
    repeat: int = 1
    app_calls: int | None = None
    method: str = "POST"


def _valid(k: Keys) -> str:
    return make_token()


def _rs256_guard(k: Keys) -> dict[str, Any]:
    return {"jwt": jwt_config(algorithms=["RS256"], key=k.rsa.public_pem)}


def _kid_token(kid: Any) -> Callable[[Keys], str]:
    return lambda k: raw_token({"alg": "HS256", "typ": "JWT", "kid": kid}, default_claims(), hmac_key=k.hs256)


def _header_token(extra: dict[str, Any]) -> Callable[[Keys], str]:
    return lambda k: make_token(headers=extra)


BAD_TOKENS = [
    pytest.param(lambda k: make_token(exp=1_000_000, iat=999_000), id="expired"),
    pytest.param(
        lambda k: make_token(key=b"another-secret-another-secret-0123456789"), id="forged-signature"
    ),
    pytest.param(lambda k: make_token()[:-4] + "AAAA", id="broken-signature"),
    pytest.param(lambda k: make_token().rsplit(".", 1)[0] + ".", id="null-signature"),
    pytest.param(lambda k: raw_token({"alg": "none", "typ": "JWT"}, default_claims()), id="alg-none"),
    pytest.param(lambda k: raw_token({"alg": "None", "typ": "JWT"}, default_claims()), id="alg-None"),
    pytest.param(lambda k: raw_token({"alg": "NONE", "typ": "JWT"}, default_claims()), id="alg-NONE"),
    pytest.param(lambda k: raw_token({"alg": "nOnE", "typ": "JWT"}, default_claims()), id="alg-nOnE"),
    pytest.param(
        lambda k: raw_token({"alg": "none"}, default_claims(), hmac_key=k.hs256), id="alg-none-with-signature"
    ),
    pytest.param(lambda k: make_token(aud="another-api"), id="wrong-audience"),
    pytest.param(lambda k: make_token(aud=None), id="missing-audience"),
    pytest.param(lambda k: make_token(iss="https://evil.example.test"), id="wrong-issuer"),
    pytest.param(lambda k: make_token(iss=ISSUER + ".evil"), id="issuer-superstring"),
    pytest.param(lambda k: make_token(iss=ISSUER[:-1]), id="issuer-substring"),
    pytest.param(lambda k: make_token(iss=None), id="missing-issuer"),
    pytest.param(lambda k: make_token(iat=int(time.time()) + 3600), id="issued-in-future"),
    pytest.param(lambda k: make_token(nbf=int(time.time()) + 3600), id="not-yet-valid"),
    pytest.param(lambda k: make_token(headers={"typ": "JWT", "crit": ["exp"]}), id="crit-header"),
    pytest.param(lambda k: make_token(exp=None), id="missing-exp"),
    pytest.param(lambda k: make_token(iat=None), id="missing-iat"),
    pytest.param(lambda k: make_token(sub=None), id="missing-sub"),
    pytest.param(lambda k: make_token(exp="soon"), id="exp-not-a-number"),
    pytest.param(_header_token({"jku": "https://evil.example.test/jwks.json"}), id="jku-header"),
    pytest.param(_header_token({"jwk": {"kty": "oct", "k": "c2VjcmV0"}}), id="jwk-header"),
    pytest.param(_header_token({"x5u": "https://evil.example.test/cert.pem"}), id="x5u-header"),
    pytest.param(_header_token({"x5c": ["MIIB"]}), id="x5c-header"),
    pytest.param(_kid_token(""), id="kid-empty"),
    pytest.param(_kid_token("../../../../dev/null"), id="kid-path-traversal"),
    pytest.param(_kid_token("/dev/null"), id="kid-absolute-path"),
    pytest.param(_kid_token("x' UNION SELECT '1';--"), id="kid-sql"),
    pytest.param(_kid_token("|sleep 10"), id="kid-shell"),
    pytest.param(_kid_token("k" * 10_000), id="kid-10kB"),
    pytest.param(_kid_token(1), id="kid-number"),
    pytest.param(_kid_token(None), id="kid-null"),
    pytest.param(_kid_token([]), id="kid-list"),
    pytest.param(lambda k: "." * 100, id="100-dots"),
    pytest.param(lambda k: make_token(pad="x" * 200_000), id="huge-token"),
    pytest.param(lambda k: "not-a-jwt", id="garbage"),
    pytest.param(lambda k: "e30.e30.e30", id="empty-json-objects"),
    pytest.param(lambda k: "W10.e30.AAAA", id="header-is-a-list"),
]

MALFORMED = [  # not an RFC 6750 b64token: 400 invalid_request, before any key lookup
    pytest.param(lambda k: "", id="empty-bearer"),
    pytest.param(lambda k: "!!!.***.???", id="not-base64url"),
    pytest.param(lambda k: make_token() + ", Bearer " + make_token(sub="someone-else"), id="two-credentials"),
    pytest.param(lambda k: "abc def", id="space-inside"),
]

RS256_ATTACKS = [
    pytest.param(
        lambda k: raw_token({"alg": "HS256", "typ": "JWT"}, default_claims(), hmac_key=k.rsa.public_pem),
        id="hs256-signed-with-rsa-public-key",
    ),
    pytest.param(lambda k: make_token(key=k.ec), id="es256-where-rs256-configured"),
    pytest.param(lambda k: make_token(key=k.hs256), id="hs256-where-rs256-configured"),
]

SCENARIOS = [
    pytest.param(Case(_valid, 200, app_calls=1), id="valid-hs256"),
    pytest.param(
        Case(lambda k: make_token(key=k.rsa), 200, guard=_rs256_guard, app_calls=1), id="valid-rs256"
    ),
    pytest.param(
        Case(
            lambda k: make_token(key=k.ec),
            200,
            guard=lambda k: {"jwt": jwt_config(algorithms=["ES256"], key=k.ec.public_pem)},
            app_calls=1,
        ),
        id="valid-es256",
    ),
    pytest.param(
        Case(
            lambda k: make_token(key=k.ed25519),
            200,
            guard=lambda k: {"jwt": jwt_config(algorithms=["EdDSA"], key=k.ed25519.public_pem)},
            app_calls=1,
        ),
        id="valid-eddsa",
    ),
    pytest.param(Case(lambda k: None, 401, "missing_token", app_calls=0), id="no-token"),
    pytest.param(
        Case(
            lambda k: None, 401, "missing_token", headers={"authorization": "Basic dXNlcjpwYXNz"}, app_calls=0
        ),
        id="basic-auth-is-no-bearer-token",
    ),
    pytest.param(
        Case(
            lambda k: make_token(scope="read"),
            403,
            "insufficient_scope",
            guard=lambda k: {"jwt": jwt_config(required_scopes=["infer"])},
            app_calls=0,
        ),
        id="insufficient-scope",
    ),
    pytest.param(
        Case(
            lambda k: make_token(scope="read infer"),
            200,
            guard=lambda k: {"jwt": jwt_config(required_scopes=["infer"])},
            app_calls=1,
        ),
        id="sufficient-scope",
    ),
    pytest.param(
        Case(
            _valid,
            429,
            "rate_limited",
            guard=lambda k: {"limits": LimitConfig(default="2/minute")},
            repeat=3,
            app_calls=2,
        ),
        id="limit-reached",
    ),
    pytest.param(
        Case(_valid, 200, guard=lambda k: {"detectors": [StaticDetector(0.6)]}, app_calls=1),
        id="detector-flag",
    ),
    pytest.param(
        Case(
            _valid, 429, "suspicious_usage", guard=lambda k: {"detectors": [StaticDetector(1.0)]}, app_calls=0
        ),
        id="detector-block",
    ),
    pytest.param(
        Case(
            _valid,
            403,
            "suspicious_usage",
            guard=lambda k: {"detectors": [StaticDetector(1.0)], "policy": Policy(block_status=403)},
            app_calls=0,
        ),
        id="detector-block-403",
    ),
    pytest.param(
        Case(_valid, 200, guard=lambda k: {"detectors": [RaisingDetector()]}, app_calls=1),
        id="detector-raises",
    ),
    pytest.param(
        Case(
            _valid,
            429,
            "suspicious_usage",
            guard=lambda k: {"detectors": [RaisingDetector()], "policy": Policy(on_error="block")},
            app_calls=0,
        ),
        id="detector-raises-on-error-block",
    ),
    pytest.param(
        Case(
            _valid,
            200,
            guard=lambda k: {"detectors": [StaticDetector(1.0)], "policy": Policy(shadow=True)},
            app_calls=1,
        ),
        id="shadow-would-block",
    ),
    pytest.param(
        Case(
            _valid,
            200,
            guard=lambda k: {"limits": LimitConfig(default="1/minute"), "policy": Policy(shadow=True)},
            repeat=3,
            app_calls=3,
        ),
        id="shadow-would-rate-limit",
    ),
    pytest.param(
        Case(
            lambda k: None, 401, "missing_token", guard=lambda k: {"policy": Policy(shadow=True)}, app_calls=0
        ),
        id="shadow-still-authenticates",
    ),
    pytest.param(
        Case(
            lambda k: make_token(tier="partner"),
            200,
            guard=lambda k: {
                "detectors": [StaticDetector(1.0)],
                "policy": Policy(tier_detection={"partner": "shadow"}),
            },
            app_calls=1,
        ),
        id="shadow-tier-would-block",
    ),
    pytest.param(
        Case(
            lambda k: make_token(tier="partner"),
            429,
            "rate_limited",
            guard=lambda k: {
                "limits": LimitConfig(default="1/minute"),
                "policy": Policy(tier_detection={"partner": "off"}),
            },
            repeat=2,
            app_calls=1,
        ),
        id="detection-off-tier-still-rate-limited",
    ),
    pytest.param(
        Case(
            lambda k: make_token(tier="free"),
            429,
            "suspicious_usage",
            guard=lambda k: {
                "detectors": [StaticDetector(1.0)],
                "policy": Policy(tier_detection={"partner": "shadow"}),
            },
            app_calls=0,
        ),
        id="other-tiers-still-blocked",
    ),
    pytest.param(
        Case(
            _valid,
            413,
            "request_too_large",
            guard=lambda k: {"max_body_bytes": 64},
            body=b"x" * 65,
            app_calls=0,
        ),
        id="body-over-cap-content-length",
    ),
    pytest.param(
        Case(_valid, 200, guard=lambda k: {"max_body_bytes": 64}, body=b"x" * 64, app_calls=1),
        id="body-at-cap",
    ),
    pytest.param(Case(lambda k: None, 200, path="/health", app_calls=1), id="exempt-path"),
    pytest.param(Case(_valid, 204, path="/empty", app_calls=1), id="no-content-response"),
    pytest.param(Case(_valid, 200, method="HEAD", body=b"", app_calls=1), id="head-request"),
    *[pytest.param(Case(p.values[0], 401, "invalid_token", app_calls=0), id=str(p.id)) for p in BAD_TOKENS],
    *[pytest.param(Case(p.values[0], 400, "invalid_request", app_calls=0), id=str(p.id)) for p in MALFORMED],
    *[
        pytest.param(Case(p.values[0], 401, "invalid_token", guard=_rs256_guard, app_calls=0), id=str(p.id))
        for p in RS256_ATTACKS
    ],
]


@pytest.mark.parametrize("case", SCENARIOS)
def test_scenario(serve: Callable[..., Served], keys: Keys, case: Case) -> None:
    """Each scenario gives its status and problem code, and reaches the app only when allowed."""
    served = serve(**case.guard(keys))
    token = case.token(keys)
    headers = {"content-type": "application/json", **case.headers}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    for _ in range(case.repeat):
        response = served.client.request(case.method, case.path, content=case.body, headers=headers)
    assert response.status_code == case.status, response.text
    if case.app_calls is not None:
        assert len(served.app.calls) == case.app_calls
    assert ("retry-after" in response.headers) == (response.status_code in (429, 503))
    if response.status_code in (401, 403, 413) or case.code == "suspicious_usage":
        assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers
    if case.code is None:
        if token is not None and served.app.calls:
            assert all(call.identity.client_id == SUBJECT for call in served.app.calls)
        return
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == case.code
    assert problem["status"] == case.status
    assert int(response.headers["content-length"]) == len(response.content)
    if case.code == "missing_token":
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    elif case.code == "invalid_token":
        assert response.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_token"'
        assert token is not None
        # The same generic body whatever failed: no oracle. Compare with a plain garbage token.
        reference = served.post(token="garbage")
        assert response.content == reference.content
        for part in (token, *token.split(".")):
            if len(part) > 8:
                assert part not in response.text
    elif case.code == "invalid_request":
        assert response.headers["www-authenticate"] == 'Bearer realm="api", error="invalid_request"'
        assert token is not None
        for part in (token, *token.replace(",", ".").split(".")):
            if len(part) > 8:
                assert part not in response.text
    elif case.code == "insufficient_scope":
        assert response.headers["www-authenticate"].startswith(
            'Bearer realm="api", error="insufficient_scope"'
        )


# -- details of the rows, asserted on both adapters --------------------------------------------


def test_valid_token_identity_and_span(serve: Callable[..., Served], span_exporter: Any) -> None:
    """A valid token reaches the app once with the verified identity; the span hashes the
    client id, carries a fingerprint, and holds no prompt text or token."""
    served = serve()
    token = make_token(tier="pro")
    response = served.post(token=token)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    (call,) = served.app.calls
    assert call.body == CHAT
    assert call.identity.client_id == SUBJECT
    assert call.identity.tier == "pro"
    assert call.identity.tenant == ISSUER
    (span,) = guard_spans(span_exporter)
    attrs = span.attributes
    assert attrs[ATTR_DECISION] == "allow"
    assert attrs[ATTR_CLIENT_ID] == hash_identifier(SUBJECT)
    assert attrs[ATTR_CLIENT_TIER] == "pro"
    assert attrs[ATTR_CLIENT_TENANT] == ISSUER
    assert len(attrs[ATTR_QUERY_FINGERPRINT]) == 16
    assert attrs[ATTR_LIMIT_REMAINING] == 999
    assert attrs["http.response.status_code"] == 200
    assert not [e for e in span.events if e.name == EVENT_DECISION]
    assert_no_secrets(span, PROMPT, "SECRET-PROMPT", token, token.rsplit(".", 1)[1], SUBJECT)


def test_logs_hold_no_token_or_prompt(serve: Callable[..., Served], caplog: pytest.LogCaptureFixture) -> None:
    """Nothing distillguard logs, at any level, carries a token, a signature or prompt text,
    whatever happened to the request (forged token, refusal, detector failure)."""
    import logging

    caplog.set_level(logging.DEBUG)
    served = serve(limits=LimitConfig(default="1/minute"), detectors=[RaisingDetector()])
    good = make_token()
    forged = make_token(key=b"another-secret-another-secret-0123456789")
    codes = [served.post(token=t).status_code for t in (forged, good, good)]
    assert codes == [401, 200, 429]
    text = caplog.text
    for secret in (good, forged, good.rsplit(".", 1)[1], forged.rsplit(".", 1)[1], PROMPT):
        assert secret not in text


def test_span_strings_are_capped(serve: Callable[..., Served], span_exporter: Any) -> None:
    """Oversized values from the client (tier claim, model name, path) and from detectors
    (reasons) are cut to ``max_attribute_length`` on the span and its events."""
    from distillguard import TelemetryConfig

    served = serve(
        telemetry=TelemetryConfig(hash_identifiers=False, max_attribute_length=64),
        detectors=[StaticDetector(0.6, reasons=("r" * 5000,))],
    )
    body = json.dumps({"model": "m" * 5000, "messages": [{"role": "user", "content": "hi"}]}).encode()
    token = make_token(sub="s" * 2000, tier="t" * 2000)
    assert served.post("/v1/" + "p" * 3000, token=token, body=body).status_code == 200
    (span,) = guard_spans(span_exporter)
    strings = [v for v in span_strings(span) if v not in (span.name,)]
    assert strings and max(len(v) for v in strings) <= 64


def test_client_id_unhashed_when_configured(serve: Callable[..., Served], span_exporter: Any) -> None:
    """With ``hash_identifiers=False`` the span carries the raw client id."""
    from distillguard import TelemetryConfig

    served = serve(telemetry=TelemetryConfig(hash_identifiers=False))
    assert served.post(token=make_token()).status_code == 200
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_CLIENT_ID] == SUBJECT


def test_refusals_leave_no_secret_on_spans(serve: Callable[..., Served], span_exporter: Any) -> None:
    """Refused requests (invalid token, rate limit, detector block) leak neither the prompt nor
    the token into any span attribute or event."""
    served = serve(limits=LimitConfig(default="1/minute"), detectors=[StaticDetector(0.6)])
    good = make_token()
    forged = make_token(key=b"another-secret-another-secret-0123456789")
    statuses = [served.post(token=t).status_code for t in (forged, good, good)]
    assert statuses == [401, 200, 429]
    spans = guard_spans(span_exporter)
    assert [s.attributes[ATTR_DECISION] for s in spans] == ["unauthenticated", "flag", "rate_limited"]
    for span in spans:
        assert_no_secrets(
            span, PROMPT, "SECRET-PROMPT", good, forged, good.rsplit(".", 1)[1], forged.rsplit(".", 1)[1]
        )


def test_forged_tokens_do_not_spend_the_victims_quota(serve: Callable[..., Served]) -> None:
    """50 forged tokens carrying a victim's ``sub`` are refused without charging the victim's
    limits: the victim's own valid token still gets its full quota."""
    served = serve(limits=LimitConfig(default="2/minute"))
    forged = make_token(sub="victim", key=b"attacker-secret-attacker-secret-0123456789")
    assert {served.post(token=forged).status_code for _ in range(50)} == {401}
    victim = make_token(sub="victim")
    assert [served.post(token=victim).status_code for _ in range(3)] == [200, 200, 429]


def test_rate_limit_headers_draft10(serve: Callable[..., Served]) -> None:
    """Allowed responses carry RateLimit-Policy/RateLimit in draft-10 structured-field syntax
    and no Retry-After; the refusal has Retry-After >= 1 and a problem+json body."""
    served = serve(limits=LimitConfig(default="2/minute;100/day"))
    token = make_token()
    first, second, third = (served.post(token=token) for _ in range(3))
    for response, remaining in ((first, 1), (second, 0)):
        assert response.status_code == 200
        assert "retry-after" not in response.headers
        policy = http_sf.parse(response.headers["ratelimit-policy"].encode(), tltype="list")
        assert policy == [("2-per-1-minute", {"q": 2, "w": 60}), ("100-per-1-day", {"q": 100, "w": 86400})]
        state = http_sf.parse(response.headers["ratelimit"].encode(), tltype="list")
        assert [name for name, _ in state] == ["2-per-1-minute", "100-per-1-day"]
        assert state[0][1]["r"] == remaining
        assert 0 <= state[0][1]["t"] <= 60
        assert 0 <= state[1][1]["t"] <= 86400
    assert third.status_code == 429
    retry = third.headers["retry-after"]
    assert retry.isdigit() and 1 <= int(retry) <= 60
    assert "retry-after-ms" not in third.headers  # OpenAI's field: with header_style="openai"
    assert third.headers["content-type"] == "application/problem+json"
    problem = third.json()
    assert problem["code"] == "rate_limited"
    assert problem["violated-policies"] == ["2-per-1-minute"]
    state = http_sf.parse(third.headers["ratelimit"].encode(), tltype="list")
    assert state[0][1]["r"] == 0
    assert len(served.app.calls) == 2


def test_openai_rate_limit_headers(serve: Callable[..., Served]) -> None:
    """``header_style="openai"``: each response carries OpenAI's ``x-ratelimit-*`` fields for
    the window with the least quota left (no IETF fields); the refusal too, with Retry-After
    and ``retry-after-ms``."""
    served = serve(limits=LimitConfig(default="2/minute;3/day", header_style="openai"))
    token = make_token()
    responses = [served.post(token=token) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    first, second, refused = responses
    assert first.headers["x-ratelimit-limit-requests"] == "2"  # 1 left of 2/minute, 2 of 3/day
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    for response in responses:
        assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers
        assert "x-ratelimit-limit-tokens" not in response.headers  # no token window
        reset = re.fullmatch(r"(?:(\d+)m)?(\d+)s", response.headers["x-ratelimit-reset-requests"])
        assert reset is not None and 0 <= int(reset[1] or 0) * 60 + int(reset[2]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # the exact wait, which OpenAI's SDKs read first, within the rounded-up Retry-After
    assert 1 <= int(refused.headers["retry-after-ms"]) <= int(refused.headers["retry-after"]) * 1000
    assert "retry-after" not in first.headers and "retry-after-ms" not in first.headers


def test_shadow_mode_sends_no_retry_fields_on_an_admitted_request(serve: Callable[..., Served]) -> None:
    """In shadow mode a request over its window is admitted: no ``Retry-After`` nor
    ``retry-after-ms`` on its 200, whatever the header style."""
    served = serve(limits=LimitConfig(default="1/minute", header_style="both"), policy=Policy(shadow=True))
    token = make_token()
    responses = [served.post(token=token) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    for response in responses:
        assert "retry-after" not in response.headers and "retry-after-ms" not in response.headers


def test_both_rate_limit_header_styles(serve: Callable[..., Served]) -> None:
    """``header_style="both"`` sends the IETF and the OpenAI fields, saying the same."""
    served = serve(limits=LimitConfig(default="5/minute", header_style="both"))
    response = served.post(token=make_token())
    state = http_sf.parse(response.headers["ratelimit"].encode(), tltype="list")
    assert state[0][1]["r"] == int(response.headers["x-ratelimit-remaining-requests"]) == 4
    assert response.headers["x-ratelimit-limit-requests"] == "5"


@pytest.mark.parametrize("style", ["ietf", "openai", "both"])
def test_the_guards_quota_fields_replace_the_apps(serve: Callable[..., Served], style: str) -> None:
    """An app (or the upstream behind a gateway) that sends its own quota fields does not
    leave two values of a field for the client: the guard's replace those it sends itself;
    the app's other headers, and the quota fields of the other style, pass unchanged."""
    served = serve(limits=LimitConfig(default="5/minute", header_style=style))
    response = served.post("/quota", token=make_token())
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-1"
    ietf = response.headers.get_list("ratelimit")
    openai = response.headers.get_list("x-ratelimit-remaining-requests")
    assert ietf == (['"upstream";r=4999;t=1'] if style == "openai" else ['"5-per-1-minute";r=4;t=60'])
    assert openai == (["4999"] if style == "ietf" else ["4"])


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_every_strategy_enforces_the_limit(serve: Callable[..., Served], strategy: str) -> None:
    """Each ``limits`` strategy admits exactly the limit within a window, then refuses with
    Retry-After >= 1."""
    served = serve(limits=LimitConfig(default="3/minute", strategy=strategy))
    token = make_token()
    responses = [served.post(token=token) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    assert int(responses[3].headers["retry-after"]) >= 1
    assert len(served.app.calls) == 3


def test_rate_limit_headers_can_be_disabled(serve: Callable[..., Served]) -> None:
    """``LimitConfig(headers=False)`` still enforces limits but discloses no RateLimit fields."""
    served = serve(limits=LimitConfig(default="1/minute", headers=False))
    token = make_token()
    ok, refused = served.post(token=token), served.post(token=token)
    assert ok.status_code == 200 and refused.status_code == 429
    for response in (ok, refused):
        assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers
    assert int(refused.headers["retry-after"]) >= 1


def test_tiers_get_their_own_limits(serve: Callable[..., Served]) -> None:
    """A ``pro`` client gets its tier's windows; a default client the default ones."""
    served = serve(limits=LimitConfig(default="1/minute", tiers={"pro": "3/minute"}))
    pro, free = make_token(sub="p", tier="pro"), make_token(sub="f")
    assert [served.post(token=pro).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert [served.post(token=free).status_code for _ in range(2)] == [200, 429]


def test_detector_flag_is_a_span_event(serve: Callable[..., Served], span_exporter: Any) -> None:
    """A detector score over the flag threshold serves the request and adds a decision event."""
    detector = StaticDetector(0.6, reasons=("probe",))
    served = serve(detectors=[detector])
    assert served.post(token=make_token()).status_code == 200
    assert len(detector.calls) == 1
    assert detector.calls[0].query.text == PROMPT  # detectors do see the prompt, in memory
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "flag"
    assert span.attributes[ATTR_DETECTOR_SCORE.format("static")] == pytest.approx(0.6)
    (event,) = [e for e in span.events if e.name == EVENT_DECISION]
    assert event.attributes[ATTR_DECISION] == "flag"
    assert list(event.attributes["distillguard.reasons"]) == ["static:probe"]


@pytest.mark.parametrize(
    ("score", "shadow", "status", "disclosed"),
    [
        (0.0, None, 200, True),  # allow
        (0.55, None, 200, False),  # flag
        (0.65, None, 429, False),  # throttle (refused by the tighter window)
        (0.8, None, 429, False),  # degrade, and over the throttle window the second time
        (1.0, None, 429, False),  # block
        (0.55, "global", 200, True),
        (0.65, "global", 200, True),
        (0.8, "global", 200, True),
        (1.0, "global", 200, True),
        (1.0, "tier", 200, True),
    ],
)
def test_ratelimit_fields_by_verdict(
    serve: Callable[..., Served], score: float, shadow: str | None, status: int, disclosed: bool
) -> None:
    """A client the risk policy flags, throttles, degrades or blocks gets no RateLimit fields
    (nothing to pace itself on), a throttled 429 included; in shadow mode, global or for the
    client's tier, every verdict leaves the response as an allowed one would be, fields
    included."""
    from distillguard.risk import RiskPolicy

    risk = RiskPolicy(throttle_limits="1/minute")
    policy = Policy(
        risk=risk,
        shadow=shadow == "global",
        tier_detection={"partner": "shadow"} if shadow == "tier" else {},
    )
    served = serve(detectors=[StaticDetector(score)], policy=policy)
    token = make_token(tier="partner") if shadow == "tier" else make_token()
    responses = [served.post(token=token) for _ in range(2)]
    assert responses[-1].status_code == status
    for response in responses[1:]:
        assert ("ratelimit" in response.headers) is disclosed
        assert ("ratelimit-policy" in response.headers) is disclosed


def test_detector_block_has_no_ratelimit_headers(serve: Callable[..., Served], span_exporter: Any) -> None:
    """A block is a 429 ``suspicious_usage`` with Retry-After and no RateLimit fields."""
    served = serve(detectors=[StaticDetector(1.0)], policy=Policy(block_retry_after=120))
    response = served.post(token=make_token())
    assert response.status_code == 429
    assert response.json()["code"] == "suspicious_usage"
    assert response.headers["retry-after"] == "120"
    assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers
    assert served.app.calls == []
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "block"
    assert span.attributes["http.response.status_code"] == 429
    assert [e.attributes[ATTR_DECISION] for e in span.events if e.name == EVENT_DECISION] == ["block"]


def test_raising_detector_is_recorded(serve: Callable[..., Served], span_exporter: Any) -> None:
    """A detector that raises does not break the request; the failure is on the span."""
    broken = RaisingDetector()
    served = serve(detectors=[broken, StaticDetector(0.0)])
    assert served.post(token=make_token()).status_code == 200
    assert broken.calls == 1
    (span,) = guard_spans(span_exporter)
    assert list(span.attributes[ATTR_ERRORS]) == ["detector:broken"]
    assert span.attributes[ATTR_DECISION] == "allow"
    assert "detector bug" not in " ".join(str(v) for v in span.attributes.values())


def test_shadow_mode_records_what_it_would_do(serve: Callable[..., Served], span_exporter: Any) -> None:
    """In shadow mode a would-block and a would-rate-limit request are served, and their spans
    say shadow with the verdict that would have applied."""
    served = serve(
        limits=LimitConfig(default="1/minute"), detectors=[StaticDetector(1.0)], policy=Policy(shadow=True)
    )
    token = make_token()
    responses = [served.post(token=token) for _ in range(2)]
    assert [r.status_code for r in responses] == [200, 200]
    assert all("retry-after" not in r.headers for r in responses)
    assert [c.body for c in served.app.calls] == [CHAT, CHAT]
    spans = guard_spans(span_exporter)
    assert [s.attributes[ATTR_DECISION] for s in spans] == ["block", "rate_limited"]
    for span in spans:
        assert span.attributes[ATTR_SHADOW] is True
        (event,) = [e for e in span.events if e.name == EVENT_DECISION]
        assert event.attributes[ATTR_SHADOW] is True


def test_shadow_degrade_leaves_body(serve: Callable[..., Served]) -> None:
    """Shadow mode never alters the request body, even when the verdict is degrade."""
    served = serve(detectors=[StaticDetector(0.8)], policy=Policy(shadow=True))
    assert served.post(token=make_token()).status_code == 200
    assert served.app.calls[0].body == CHAT


def test_degrade_strips_logprobs(serve: Callable[..., Served], span_exporter: Any) -> None:
    """Degrade removes logprobs, top_logprobs and logit_bias from what the app sees, with a
    Content-Length that matches the new body."""
    served = serve(detectors=[StaticDetector(0.8)])
    assert served.post(token=make_token()).status_code == 200
    (call,) = served.app.calls
    seen = json.loads(call.body)
    assert "logprobs" not in seen and "top_logprobs" not in seen and "logit_bias" not in seen
    assert seen["messages"] == [{"role": "user", "content": PROMPT}]
    assert seen["max_tokens"] == 16
    assert call.content_length == str(len(call.body))
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "degrade"


def test_degrade_chunked_request(serve: Callable[..., Served]) -> None:
    """Degrading a chunked request (no Content-Length) gives the app the rewritten body with a
    Content-Length that matches it."""
    served = serve(detectors=[StaticDetector(0.8)])
    parts = [CHAT[:20], CHAT[20:]]
    response = served.client.post(
        CHAT_PATH,
        content=iter(parts),
        headers={"authorization": f"Bearer {make_token()}", "content-type": "application/json"},
    )
    assert response.status_code == 200
    (call,) = served.app.calls
    assert "logprobs" not in json.loads(call.body)
    assert call.content_length == str(len(call.body))


def test_degrade_cannot_be_dodged_with_a_lone_surrogate(serve: Callable[..., Served]) -> None:
    """A valid JSON body whose prompt holds ``\\ud800`` is degraded like any other."""
    served = serve(detectors=[StaticDetector(0.8)])
    body = b'{"messages":[{"role":"user","content":"a\\ud800b"}],"logprobs":true,"top_logprobs":5}'
    assert served.post(token=make_token(), body=body).status_code == 200
    seen = json.loads(served.app.calls[0].body)
    assert "logprobs" not in seen and "top_logprobs" not in seen


@pytest.mark.parametrize(
    ("content_type", "encode"),
    [
        ("application/JSON", lambda b: b" " + b),
        ("text/plain", lambda b: b"\r\n\t" + b),
        ("application/octet-stream", lambda b: b"\xef\xbb\xbf" + b),
        (None, lambda b: b.decode().encode("utf-16")),
        ("application/json; charset=utf-32", lambda b: b.decode().encode("utf-32-be")),
    ],
    ids=["upper-case-type", "leading-whitespace", "utf8-bom", "utf16-no-type", "utf32"],
)
def test_degrade_cannot_be_dodged_by_how_the_json_is_written(
    serve: Callable[..., Served], content_type: str | None, encode: Callable[[bytes], bytes]
) -> None:
    """A JSON body that ``json.loads`` (and so the app) reads is parsed by the guard too,
    whatever its ``Content-Type``, leading whitespace, byte order mark or UTF encoding: the
    detectors see the chat and degrade strips its log probabilities."""
    seen: list[str] = []

    class Kind(StaticDetector):
        def score(self, observation: Any) -> Any:
            seen.append(observation.query.kind)
            return super().score(observation)

    served = serve(detectors=[Kind(0.8)])
    headers = {"authorization": f"Bearer {make_token()}"}
    if content_type is not None:
        headers["content-type"] = content_type
    assert served.client.post(CHAT_PATH, content=encode(CHAT), headers=headers).status_code == 200
    (call,) = served.app.calls
    assert seen == ["chat"]
    assert "logprobs" not in json.loads(call.body)
    assert call.content_length == str(len(call.body))


def test_degrade_caps_max_tokens(serve: Callable[..., Served]) -> None:
    """``degrade_max_tokens`` caps ``max_tokens`` in the body the app sees."""
    served = serve(detectors=[StaticDetector(0.8)], policy=Policy(degrade_max_tokens=4))
    assert served.post(token=make_token()).status_code == 200
    assert json.loads(served.app.calls[0].body)["max_tokens"] == 4


def test_chunked_body_over_cap(serve: Callable[..., Served]) -> None:
    """A chunked body (no Content-Length) over the cap is refused with 413; the app is not called."""
    served = serve(max_body_bytes=64)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 10

    response = served.client.post(
        CHAT_PATH, content=chunks(), headers={"authorization": f"Bearer {make_token()}"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "request_too_large"
    assert served.app.calls == []


def test_chunked_body_under_cap_reaches_app(serve: Callable[..., Served]) -> None:
    """A chunked body under the cap reaches the app intact."""
    served = serve()
    parts = [b'{"messages":', b'[{"role":"user","content":"hi"}]', b"}"]
    response = served.client.post(
        CHAT_PATH, content=iter(parts), headers={"authorization": f"Bearer {make_token()}"}
    )
    assert response.status_code == 200
    assert served.app.calls[0].body == b"".join(parts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4096))
def test_body_byte_identical(serve: Callable[..., Served], body: bytes) -> None:
    """Any body under the cap reaches the app byte for byte, once."""
    served = serve()
    response = served.post(
        token=make_token(), body=body, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200
    (call,) = served.app.calls
    assert call.body == body
    for close in served.closers:
        close()
    served.closers.clear()


def test_streaming_passes_chunk_by_chunk(serve: Callable[..., Served]) -> None:
    """A streamed response reaches the client chunk by chunk, in order, none merged."""
    served = serve()
    status, chunks = served.raw_chunks("/stream", make_token())
    assert status == 200
    assert [c for c in chunks if c] == list(STREAM_CHUNKS)
    response = served.client.get("/stream", headers={"authorization": f"Bearer {make_token()}"})
    assert response.content == b"".join(STREAM_CHUNKS)
    assert "ratelimit" in response.headers


def test_head_and_no_content_unchanged(serve: Callable[..., Served]) -> None:
    """HEAD and 204 responses pass through with their headers and no body."""
    served = serve()
    auth = {"authorization": f"Bearer {make_token()}"}
    head = served.client.head("/", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "11"
    empty = served.client.get("/empty", headers=auth)
    assert empty.status_code == 204 and empty.content == b""
    assert "content-type" not in empty.headers


def test_exempt_path_bypasses_guard(serve: Callable[..., Served], span_exporter: Any) -> None:
    """Exempt paths reach the app without a token, a span or RateLimit headers."""
    served = serve(exempt_paths=("/health", "/public/"))
    for path in ("/health", "/public/docs"):
        response = served.client.get(path)
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    assert served.client.get("/public").status_code == 401  # the prefix needs its slash
    assert len(served.app.calls) == 2
    assert len(guard_spans(span_exporter)) == 1


def test_app_exception_propagates(serve: Callable[..., Served], span_exporter: Any) -> None:
    """An exception in the app propagates unchanged and is recorded on the span."""
    served = serve()
    with pytest.raises(RuntimeError, match="app failed"):
        served.client.get("/boom", headers={"authorization": f"Bearer {make_token()}"})
    (span,) = guard_spans(span_exporter)
    assert span.status.status_code.name == "ERROR"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"


def test_app_exception_mid_stream_recorded(serve: Callable[..., Served], span_exporter: Any) -> None:
    """An exception raised by the app after its response started propagates unchanged and is
    recorded on the span, in both adapters."""
    served = serve()
    with pytest.raises(RuntimeError, match="mid-stream"):
        served.client.get("/boom-stream", headers={"authorization": f"Bearer {make_token()}"})
    (span,) = guard_spans(span_exporter)
    assert span.status.status_code.name == "ERROR"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "mid-stream" not in str(event.attributes)  # the message may quote the request


@pytest.mark.parametrize("on_internal_error", ["allow", "deny"])
def test_guard_failure_follows_on_internal_error(
    serve: Callable[..., Served], span_exporter: Any, monkeypatch: pytest.MonkeyPatch, on_internal_error: str
) -> None:
    """When the guard itself fails after authentication, ``on_internal_error="allow"`` serves
    the request with its verified identity (the failure on the span) and ``"deny"`` answers a
    500 ``guard_error``; never a hang or a double response. Either way a request without a
    valid token is still refused with its 401: a guard bug never admits an anonymous caller."""
    served = serve(on_internal_error=on_internal_error)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(served.guard.plan, "checks_for", broken)
    response = served.post(token=make_token())
    (span,) = guard_spans(span_exporter)
    assert list(span.attributes[ATTR_ERRORS]) == ["guard:RuntimeError"]
    if on_internal_error == "allow":
        assert response.status_code == 200 and len(served.app.calls) == 1
        assert served.app.calls[0].identity.client_id == SUBJECT
    else:
        assert response.status_code == 500 and served.app.calls == []
        assert response.json()["code"] == "guard_error"
    calls = len(served.app.calls)
    for token in (None, "not-a-token", make_token(key=b"another-secret-of-at-least-32-bytes!")):
        refused = served.post(token=token)
        assert refused.status_code in (400, 401) and refused.json()["code"] != "guard_error"
    assert len(served.app.calls) == calls


def test_too_large_span(serve: Callable[..., Served], span_exporter: Any) -> None:
    """A 413 is recorded on the span as ``too_large``."""
    served = serve(max_body_bytes=8)
    assert served.post(token=make_token()).status_code == 413
    (span,) = guard_spans(span_exporter)
    assert span.attributes[ATTR_DECISION] == "too_large"
    assert span.attributes["http.response.status_code"] == 413


class _BrokenProcessor:
    """A span processor with a bug at one stage (``on_start`` or ``on_end``)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.stage == "on_start":
            raise RuntimeError("processor bug: secret-prompt-text")

    def _on_ending(self, span: Any) -> None:
        return None

    def on_end(self, span: Any) -> None:
        if self.stage == "on_end":
            raise RuntimeError("processor bug: secret-prompt-text")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@pytest.mark.parametrize("on_internal_error", ["allow", "deny"])
@pytest.mark.parametrize("stage", ["on_start", "on_end"])
def test_a_telemetry_failure_never_breaks_the_request(
    serve: Callable[..., Served], stage: str, on_internal_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A span processor that raises (a bug in the telemetry pipeline, not a security decision)
    neither refuses nor loses the request, whatever ``on_internal_error`` says: the app gets
    the body, the client gets the app's answer; refusals keep their problem+json; the failure
    is logged once, by type, without its message."""
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    provider.add_span_processor(_BrokenProcessor(stage))  # type: ignore[arg-type]
    served = serve(tracer_provider=provider, on_internal_error=on_internal_error)
    with caplog.at_level("WARNING", logger="distillguard"):
        for _ in range(3):
            response = served.post(token=make_token())
            assert response.status_code == 200
        refused = served.post(token=None)
    assert refused.status_code == 401 and refused.json()["code"] == "missing_token"
    assert [c.body for c in served.app.calls] == [CHAT] * 3
    failures = [r for r in caplog.records if "telemetry failed" in r.getMessage()]
    assert len(failures) == 1 and "RuntimeError" in failures[0].getMessage()
    assert "secret-prompt-text" not in caplog.text


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
def test_request_windows_count_outputs(serve: Callable[..., Served], strategy: str) -> None:
    """A request asking for several outputs (``n`` choices, a batch of prompts) costs that many
    units of its request windows: batching buys no extra samples, and a request over a window
    by itself is refused at once; ``count_outputs=False`` charges every request 1."""

    def chat(n: float | str) -> bytes:
        return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": n}).encode()

    batch = json.dumps({"model": "m", "prompt": ["a", "b", "c", "d"], "n": 2}).encode()
    served = serve(limits=LimitConfig(default="10/minute", strategy=strategy))
    token = make_token(sub="sampler")
    first = served.post(token=token, body=chat(8))
    assert first.status_code == 200
    assert http_sf.parse(first.headers["ratelimit"].encode(), tltype="list")[0][1]["r"] == 2
    assert served.post(token=token, body=chat(8)).status_code == 429
    assert served.post(token=token, body=chat(2)).status_code == 200  # exactly the rest
    alone = served.post(token=make_token(sub="greedy"), body=chat(11))
    assert alone.status_code == 429 and alone.json()["code"] == "request_over_quota"
    assert "retry-after" not in alone.headers and alone.headers["x-should-retry"] == "false"
    for spelled in (8.0, "8"):  # as a pydantic model server reads it: 8 outputs, not 1
        floaty = served.post(token=make_token(sub=f"floaty-{spelled!r}"), body=chat(spelled))
        assert http_sf.parse(floaty.headers["ratelimit"].encode(), tltype="list")[0][1]["r"] == 2
    assert served.post(token=make_token(sub="batcher"), body=batch).status_code == 200
    assert served.post(token=make_token(sub="batcher"), body=batch).status_code == 429
    assert len(served.app.calls) == 5

    plain = serve(limits=LimitConfig(default="10/minute", strategy=strategy, count_outputs=False))
    statuses = [plain.post(token=make_token(sub="sampler"), body=chat(8)).status_code for _ in range(11)]
    assert statuses == [200] * 10 + [429]


def test_two_authorization_headers_are_malformed(serve: Callable[..., Served]) -> None:
    """Two ``Authorization`` headers (the guard and the app might each read another one) are
    refused with 400 ``invalid_request`` on both adapters, never resolved to either token."""
    served = serve()
    first, second = f"Bearer {make_token()}", f"Bearer {make_token(sub='someone-else')}"
    if served.adapter == "asgi":
        headers = [("authorization", first), ("authorization", second)]
    else:  # WSGI servers (gunicorn, Werkzeug, wsgiref) join repeated headers with a comma; the
        # test transport would keep only the last one
        headers = [("authorization", f"{first},{second}")]
    headers.append(("content-type", "application/json"))
    response = served.client.post(CHAT_PATH, content=CHAT, headers=headers)
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    assert served.app.calls == []


def test_on_decision_sees_every_decision_and_cannot_break_a_request(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """``Guard(on_decision=...)`` is called once per guarded request with the decision and the
    request (allowed, refused for the token, for the limits, for the body size; not an exempt
    path); a hook that raises is logged once and the requests are served as before."""
    seen: list[tuple[str, str | None, str]] = []

    def hook(decision: Any, request: Any) -> None:
        seen.append(
            (decision.action.value, decision.identity.client_id if decision.identity else None, request.path)
        )

    served = serve(on_decision=hook, limits=LimitConfig(default="2/minute"), max_body_bytes=4096)
    assert served.post(token=make_token()).status_code == 200
    assert served.post().status_code == 401
    assert served.post(token=make_token(), body=b"x" * 5000).status_code == 413
    assert served.post(token=make_token()).status_code == 200
    assert served.post(token=make_token()).status_code == 429
    assert served.client.get("/health").status_code == 200
    assert seen == [
        ("allow", SUBJECT, CHAT_PATH),
        ("unauthenticated", None, CHAT_PATH),
        ("too_large", None, CHAT_PATH),
        ("allow", SUBJECT, CHAT_PATH),
        ("rate_limited", SUBJECT, CHAT_PATH),
    ]

    message = "".join(["quoted ", "prompt"])  # the message, never logged (the stack names the line)

    def broken(decision: Any, request: Any) -> None:
        raise RuntimeError(message)

    failing = serve(on_decision=broken)
    with caplog.at_level(logging.ERROR, logger="distillguard"):
        assert [failing.post(token=make_token()).status_code for _ in range(3)] == [200, 200, 200]
    failures = [r for r in caplog.records if "on_decision hook failed" in r.getMessage()]
    assert len(failures) == 1 and "quoted prompt" not in caplog.text
    with pytest.raises(ConfigurationError):
        serve(on_decision="not callable")

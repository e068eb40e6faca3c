"""schemathesis against the guarded example apps (reliability.md F1 and F2), each loaded from the
OpenAPI document it serves (:mod:`examples.openapi`), in process (Starlette's test client for
FastAPI, Werkzeug's for Flask).

* F1: requests generated from the schema, valid and invalid, with a valid token and limits no
  test reaches: no 5xx, and every answer (the app's, and the guard's problems) conforms to the
  document: status, content type, headers and body.
* F2: the same requests with no ``Authorization``, or garbage in it: only 401 (or 400 for a
  header that is not a bearer token at all), never a body from the app.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import Case, GenerationMode

from distillguard.settings import guard_from_env
from distillguard.testing import make_token
from tests.examples.conftest import ENV, KINDS

CHAT = "/v1/chat/completions"
HIGH = {**ENV, "DISTILLGUARD_LIMITS": "100000000/minute"}
"""The apps' environment with limits no test reaches (F1's high-limit profile)."""
_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


def _token() -> str:
    return make_token(
        "schema-tester",
        issuer=ENV["DISTILLGUARD_JWT_ISSUER"],
        audience=ENV["DISTILLGUARD_JWT_AUDIENCE"],
        key=ENV["DISTILLGUARD_JWT_SECRET"],
    )


def _app(kind: str, environ: dict[str, str], **overrides: Any) -> Any:
    """The example app of ``kind`` behind a guard read from ``environ`` (and ``overrides``)."""
    guard = guard_from_env(environ, **overrides)
    if kind == "fastapi":
        from examples.fastapi_app import create_app as create_asgi

        return create_asgi(guard)
    from examples.flask_app import create_app as create_wsgi

    return create_wsgi(guard)


def _schema(kind: str, environ: dict[str, str] = HIGH, **overrides: Any) -> Any:
    """That app, loaded as a schemathesis schema from the ``/openapi.json`` it serves."""
    app = _app(kind, environ, **overrides)
    headers = {"Authorization": f"Bearer {_token()}"}
    if kind == "fastapi":
        return schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    return schemathesis.openapi.from_wsgi("/openapi.json", app, headers=headers)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("kind", KINDS)
def test_every_answer_conforms_to_the_schema(kind: str, mode: GenerationMode) -> None:
    schema = _schema(kind)
    headers = {"Authorization": f"Bearer {_token()}"}
    statuses: set[int] = set()

    @_SETTINGS
    @given(case=schema[CHAT]["POST"].as_strategy(generation_mode=mode))
    def check(case: Case) -> None:
        response = case.call(headers=headers)
        statuses.add(response.status_code)
        assert response.status_code < 500, response.text
        if response.status_code == 401:  # a negative case may leave the token out
            assert response.request.headers.get("authorization") != headers["Authorization"]
        # the mock model is lenient (a message without content is answered): which invalid
        # requests it refuses is the app's business, not the guard's
        case.validate_response(
            response, headers=headers, excluded_checks=[schemathesis.checks.negative_data_rejection]
        )

    check()
    # valid requests are answered; invalid ones answered or refused by the app, or by the guard
    # when the token is left out
    assert statuses == ({200} if mode is GenerationMode.POSITIVE else {200, 400, 401}), statuses


@pytest.mark.parametrize("error_format", ["problem", "openai"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_guards_refusals_conform_to_the_schema(kind: str, error_format: str) -> None:
    """Tight limits and a small body cap: 429 (with ``Retry-After``) and 413 problems, and the
    ``request_over_quota`` 429 of a request over the whole window (``n`` > 3), conform too, in
    either error format (the document follows the guard's)."""
    environ = {**ENV, "DISTILLGUARD_LIMITS": "3/minute", "DISTILLGUARD_ERROR_FORMAT": error_format}
    schema = _schema(kind, environ, max_body_bytes=400)
    headers = {"Authorization": f"Bearer {_token()}"}
    codes: set[str] = set()

    @_SETTINGS
    @given(case=schema[CHAT]["POST"].as_strategy())
    def check(case: Case) -> None:
        response = case.call(headers=headers)
        assert response.status_code in (200, 413, 429), response.text
        if response.status_code != 200:
            doc = response.json()
            codes.add(doc["error"]["code"] if error_format == "openai" else doc["code"])
        # a valid request refused by policy is the point here
        case.validate_response(
            response, headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance]
        )

    check()
    over = schema[CHAT]["POST"].Case(
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 4}
    )
    response = over.call(headers=headers)
    doc = response.json()
    codes.add(doc["error"]["code"] if error_format == "openai" else doc["code"])
    over.validate_response(
        response, headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    assert codes == {"rate_limited", "request_over_quota", "request_too_large"}, codes


_GARBAGE = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=300).map(
        "Bearer {}".format
    ),
    st.sampled_from(["Bearer", "Bearer ", "bearer x.y.z", "Basic dXNlcjpwYXNz", "Bearer a.b", "Bearer ..."]),
)


@pytest.mark.parametrize("kind", KINDS)
def test_no_or_garbage_authorization_gets_only_401_or_400(kind: str) -> None:
    schema = _schema(kind)
    statuses: set[int] = set()

    @_SETTINGS
    @given(case=schema[CHAT]["POST"].as_strategy(), authorization=_GARBAGE)
    def check(case: Case, authorization: str | None) -> None:
        headers = {} if authorization is None else {"Authorization": authorization}
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call(headers=headers)
        statuses.add(response.status_code)
        assert response.status_code in (400, 401), (authorization, response.status_code, response.text)
        assert response.headers["content-type"] == ["application/problem+json"]  # the guard's
        if response.status_code == 401:
            assert response.headers["www-authenticate"][0].startswith("Bearer realm=")
        case.validate_response(response, headers=headers, excluded_checks=[schemathesis.checks.ignored_auth])

    check()
    assert 401 in statuses


@pytest.mark.parametrize("kind", KINDS)
def test_the_guards_503_conforms_to_the_schema(kind: str) -> None:
    """A limit storage that never answers under ``DISTILLGUARD_OUTAGE=fail_closed``: every
    valid request gets the guard's 503 ``limiter_unavailable`` problem with ``Retry-After``, as
    the document declares it (F1's 503)."""
    from tests.servers import BlackHole

    hole = BlackHole()
    try:
        environ = {
            **HIGH,
            "DISTILLGUARD_STORAGE_URI": hole.url + "?socket_timeout=0.1",
            "DISTILLGUARD_OUTAGE": "fail_closed",
        }
        # the document as a healthy deployment serves it (the failing one refuses its path too)
        schema = schemathesis.openapi.from_dict(_schema(kind).raw_schema)
        schema.app = _app(kind, environ)
        headers = {"Authorization": f"Bearer {_token()}"}
        codes: set[str] = set()

        @settings(
            max_examples=5,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=schema[CHAT]["POST"].as_strategy())
        def check(case: Case) -> None:
            response = case.call(headers=headers)
            assert response.status_code == 503, response.text
            codes.add(response.json()["code"])
            assert int(response.headers["retry-after"][0]) >= 1
            excluded = [schemathesis.checks.positive_data_acceptance, schemathesis.checks.not_a_server_error]
            case.validate_response(response, headers=headers, excluded_checks=excluded)

        check()
        assert codes == {"limiter_unavailable"}
    finally:
        hole.close()

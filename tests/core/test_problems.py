"""RFC 9457 problem responses: the error contract of reliability.md section 7."""

from __future__ import annotations

import json

import pytest

from distillguard import Problem

pytestmark = pytest.mark.timeout(30)

CONTRACT = [
    pytest.param(
        Problem.missing_token("api"), 401, "missing_token", 'Bearer realm="api"', id="missing-token"
    ),
    pytest.param(
        Problem.invalid_token("api"),
        401,
        "invalid_token",
        'Bearer realm="api", error="invalid_token"',
        id="invalid",
    ),
    pytest.param(
        Problem.insufficient_scope("api", ["infer", "embed"]),
        403,
        "insufficient_scope",
        'Bearer realm="api", error="insufficient_scope", scope="infer embed"',
        id="insufficient-scope",
    ),
    pytest.param(Problem.rate_limited(7, ["60-per-1-minute"]), 429, "rate_limited", None, id="rate-limited"),
    pytest.param(Problem.suspicious_usage(429, 300), 429, "suspicious_usage", None, id="suspicious-429"),
    pytest.param(Problem.suspicious_usage(403, 300), 403, "suspicious_usage", None, id="suspicious-403"),
    pytest.param(Problem.too_large(1024), 413, "request_too_large", None, id="too-large"),
    pytest.param(
        Problem.unavailable("limiter_unavailable", 5), 503, "limiter_unavailable", None, id="unavailable"
    ),
    pytest.param(Problem.guard_error(), 500, "guard_error", None, id="guard-error"),
]


@pytest.mark.parametrize(("problem", "status", "code", "challenge"), CONTRACT)
def test_contract(problem: Problem, status: int, code: str, challenge: str | None) -> None:
    """Each refusal renders its status, a problem+json body with the stable ``code``, a
    matching Content-Length, ``no-store`` caching and the right challenge."""
    got_status, headers, body = problem.render()
    header_map = dict(headers)
    assert got_status == status
    assert header_map["content-type"] == "application/problem+json"
    assert header_map["content-length"] == str(len(body))
    assert header_map["cache-control"] == "no-store"
    doc = json.loads(body)
    assert doc["status"] == status and doc["code"] == code
    assert {"type", "title", "detail"} <= doc.keys()
    assert header_map.get("www-authenticate") == challenge


@pytest.mark.parametrize(("problem", "status", "code", "challenge"), CONTRACT)
def test_retry_after_only_on_429_and_503(
    problem: Problem, status: int, code: str, challenge: str | None
) -> None:
    """``Retry-After`` is an integer >= 1 on 429 and 503 refusals and absent elsewhere."""
    headers = dict(problem.render()[1])
    if status in (429, 503):
        assert headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in headers


def test_extra_headers_are_appended() -> None:
    """Headers from the decision (RateLimit fields) are added after the problem's own."""
    _, headers, _ = Problem.rate_limited(3, ["p"]).render([("ratelimit", '"p";r=0;t=3')])
    assert headers[-1] == ("ratelimit", '"p";r=0;t=3')
    assert ("retry-after", "3") in headers


def test_rate_limited_names_violated_policies() -> None:
    """The 429 body lists the violated policies and uses the IANA quota-exceeded type."""
    doc = json.loads(Problem.rate_limited(3, ["60-per-1-minute", "1000-per-1-day"]).body())
    assert doc["violated-policies"] == ["60-per-1-minute", "1000-per-1-day"]
    assert doc["type"].endswith("#quota-exceeded")


def test_too_large_says_the_limit() -> None:
    """The 413 body states the cap, and asks the server to close the undrained connection."""
    problem = Problem.too_large(2048)
    assert json.loads(problem.body())["max-bytes"] == 2048
    assert ("connection", "close") in problem.render()[1]


def test_bodies_are_generic() -> None:
    """Problem bodies are fixed texts that never mention the realm or a claim."""
    assert Problem.invalid_token("realm-x").body() == Problem.invalid_token("api").body()
    assert b"token" in Problem.invalid_token("api").body()
    assert Problem.invalid_token("api").body() != Problem.missing_token("api").body()


def test_problem_types_follow_the_registry() -> None:
    """The IANA problem types are used with the status they are registered for: quota exceeded
    and abnormal usage on 429; a 403 block is ``about:blank``. Both name what was violated
    (a block generically: never the detector)."""
    limited = json.loads(Problem.rate_limited(7, ["60-per-1-minute"]).render()[2])
    assert limited["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert limited["violated-policies"] == ["60-per-1-minute"]
    blocked = json.loads(Problem.suspicious_usage(429, 300).render()[2])
    assert blocked["type"] == "https://iana.org/assignments/http-problem-types#abnormal-usage-detected"
    assert blocked["violated-policies"] == ["usage-pattern"]
    forbidden = json.loads(Problem.suspicious_usage(403, 300).render()[2])
    assert forbidden["type"] == "about:blank" and forbidden["status"] == 403

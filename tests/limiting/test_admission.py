"""Admission around the pipeline: the failed-authentication limiter (before any signature
check), tenant aggregate limits, refunds of refused requests, and RateLimit disclosure."""

from __future__ import annotations

import json
from typing import Any

import pytest

from distillguard import ConfigurationError, DistillGuardWSGIMiddleware, Guard, LimitConfig, Policy
from distillguard.identity.keys import StaticKeys
from distillguard.limiting import LimitRule
from distillguard.limiting.config import parse_limits
from tests.helpers import HS256_SECRET, StaticDetector, jwt_config, make_token
from tests.limiting.apps import chat_body, llm_wsgi_app, wsgi_call

pytestmark = [pytest.mark.timeout(30)]


class CountingKeys:
    """A key resolver that counts lookups (a lookup precedes every signature check)."""

    def __init__(self) -> None:
        self.inner = StaticKeys(HS256_SECRET, ["HS256"])
        self.lookups = 0

    def key_for(self, kid: str | None, alg: str) -> Any:
        self.lookups += 1
        return self.inner.key_for(kid, alg)


def mw(
    tracer_provider: Any, jwt: Any = None, detectors: Any = (), **limits: Any
) -> DistillGuardWSGIMiddleware:
    limits.setdefault("default", "1000/minute")
    guard = Guard(
        jwt=jwt or jwt_config(),
        limits=LimitConfig(**limits),
        detectors=detectors,
        tracer_provider=tracer_provider,
    )
    return DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard)


def test_failed_auth_limiter_refuses_before_any_verification(tracer_provider: Any) -> None:
    """After 3 invalid tokens from one address, its next request gets 429 without a key lookup
    or signature check, even with a valid token; other addresses are unaffected; requests with
    no token are not counted."""
    keys = CountingKeys()
    app = mw(tracer_provider, jwt=jwt_config(key=None, key_resolver=keys), auth_failures="3/minute")
    forged = make_token(key=b"another-secret-that-is-long-enough-0123")
    for _ in range(2):
        assert wsgi_call(app, client="6.6.6.6")[0] == 401  # no token: not counted
    assert [wsgi_call(app, token=forged, client="6.6.6.6")[0] for _ in range(3)] == [401, 401, 401]
    lookups = keys.lookups
    status, headers, body = wsgi_call(app, token=make_token(sub="fresh"), client="6.6.6.6")
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert b"authentication-failures" in body and b"3-per-1-minute" not in body  # never its quota
    assert keys.lookups == lookups  # refused before verification
    assert wsgi_call(app, token=make_token(sub="fresh"), client="7.7.7.7")[0] == 200


def test_failed_auth_limiter_is_off_by_default(tracer_provider: Any) -> None:
    """Without ``auth_failures`` invalid tokens are never rate limited (always 401)."""
    app = mw(tracer_provider)
    forged = make_token(key=b"another-secret-that-is-long-enough-0123")
    assert {wsgi_call(app, token=forged)[0] for _ in range(30)} == {401}


def test_tenant_aggregate_limit_trips_across_clients(tracer_provider: Any) -> None:
    """Clients of one tenant (a configurable claim) share the tenant's windows; another tenant
    has its own."""
    app = mw(tracer_provider, jwt=jwt_config(tenant_claim="org"), tenant="3/minute")
    statuses = [wsgi_call(app, token=make_token(sub=f"u{i}", org="acme"))[0] for i in range(3)]
    assert statuses == [200, 200, 200]
    status, headers, body = wsgi_call(app, token=make_token(sub="u3", org="acme"))
    assert status == 429 and int(headers["retry-after"]) >= 1
    # the tenant's window is never disclosed: the refusal names it without its quota, and sends
    # no RateLimit fields (the client's own window, with room left, would contradict the 429)
    assert json.loads(body)["violated-policies"] == ["tenant"] and b"3-per-1-minute" not in body
    assert "ratelimit" not in headers and "ratelimit-policy" not in headers
    assert wsgi_call(app, token=make_token(sub="v", org="globex"))[0] == 200


def test_tenant_defaults_to_the_issuer(tracer_provider: Any) -> None:
    """Without a tenant claim, the issuer is the tenant."""
    app = mw(tracer_provider, tenant="2/minute")
    assert [wsgi_call(app, token=make_token(sub=f"u{i}"))[0] for i in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_refused_request_leaves_earlier_windows_as_they_were(tracer_provider: Any, strategy: str) -> None:
    """When a later window refuses, the earlier windows it was charged on are refunded, and a
    refused fixed-window hit is not kept: exactly ``limit`` requests ever succeed."""
    rules = [LimitRule(name="route", limits="2/minute", routes=["/v1/chat/completions"])]
    app = mw(tracer_provider, default="5/minute", strategy=strategy, rules=rules)
    assert [wsgi_call(app, token=make_token())[0] for _ in range(4)] == [200, 200, 429, 429]
    table = app._perform.limiter.local.table
    item = parse_limits("5/minute")[0]
    key = item.key_for("c", "default", "client-1")
    if strategy == "moving-window":
        held = table.get_moving_window(key, 5, 60)[1]
    elif strategy == "fixed-window":
        held = table.get(key)
    else:
        held = table.get_sliding_window(key, 60)[2]
    assert held == 2
    assert [wsgi_call(app, token=make_token(), path="/other")[0] for _ in range(4)] == [200, 200, 200, 429]


def test_detector_block_refunds_the_request(tracer_provider: Any) -> None:
    """A request a detector blocks keeps no quota."""
    app = mw(tracer_provider, default="2/minute", detectors=[StaticDetector(0.95)])
    assert {wsgi_call(app, token=make_token())[0] for _ in range(5)} == {429}
    table = app._perform.limiter.local.table
    item = parse_limits("2/minute")[0]
    assert table.get_moving_window(item.key_for("c", "default", "client-1"), 2, 60)[1] == 0


def test_headers_can_be_disabled_per_policy(tracer_provider: Any) -> None:
    """A rule with ``headers=False`` is not disclosed; the other windows are. ``headers=False``
    on the config hides them all."""
    rules = [LimitRule(name="secret", limits="50/minute", headers=False)]
    _, headers, _ = wsgi_call(mw(tracer_provider, rules=rules), token=make_token())
    assert headers["ratelimit-policy"] == '"1000-per-1-minute";q=1000;w=60'
    _, headers, _ = wsgi_call(mw(tracer_provider, rules=rules, headers=False), token=make_token())
    assert "ratelimit" not in headers and "ratelimit-policy" not in headers


@pytest.mark.parametrize(("score", "disclosed"), [(0.0, True), (0.6, False), (0.8, False)])
def test_headers_are_withheld_from_flagged_clients(
    tracer_provider: Any, score: float, disclosed: bool
) -> None:
    """RateLimit fields go to clean clients only: flagged or degraded clients get none."""
    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000/minute"),
        detectors=[StaticDetector(score)],
        policy=Policy(flag=0.5, degrade=0.75, block=0.9),
        tracer_provider=tracer_provider,
    )
    status, headers, _ = wsgi_call(DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard), token=make_token())
    assert status == 200
    assert ("ratelimit" in headers) is disclosed
    assert ("ratelimit-policy" in headers) is disclosed


def test_shadow_mode_computes_limits_but_refuses_nothing(tracer_provider: Any) -> None:
    """In shadow mode over-limit, over-concurrency and failed-auth addresses are recorded but
    served (authentication itself is still enforced)."""
    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="2/minute", auth_failures="1/minute", concurrency=1),
        policy=Policy(shadow=True),
        tracer_provider=tracer_provider,
    )
    app = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard)
    assert [wsgi_call(app, token=make_token())[0] for _ in range(4)] == [200] * 4
    forged = make_token(key=b"another-secret-that-is-long-enough-0123")
    assert [wsgi_call(app, token=forged, client="6.6.6.6")[0] for _ in range(2)] == [401, 401]
    assert wsgi_call(app, token=make_token(sub="x"), client="6.6.6.6")[0] == 200
    _, _, held = wsgi_call(app, token=make_token(), consume=False)
    assert wsgi_call(app, token=make_token())[0] == 200  # over the cap: recorded, served
    held.close()


def test_several_issuers_count_the_same_sub_apart(tracer_provider: Any) -> None:
    """With several issuers, ``user-1`` of one and ``user-1`` of another are two clients: their
    windows and concurrency slots are apart."""
    guard = Guard(
        jwt=jwt_config(issuer=["https://a.example", "https://b.example"]),
        limits=LimitConfig(default="2/minute"),
        tracer_provider=tracer_provider,
    )
    app = DistillGuardWSGIMiddleware(llm_wsgi_app, guard=guard)

    def status(issuer: str) -> int:
        return wsgi_call(app, token=make_token(sub="user-1", iss=issuer))[0]

    assert [status("https://a.example") for _ in range(3)] == [200, 200, 429]
    assert status("https://b.example") == 200


def test_key_parts_cannot_run_into_each_other(tracer_provider: Any) -> None:
    """Client ``a/b`` of tier ``c`` and client ``b`` of tier ``c/a`` would join into the same
    counter key without escaping."""
    app = mw(tracer_provider, default="1/minute", tiers={"c": "1/minute", "c/a": "1/minute"})
    first = wsgi_call(app, token=make_token(sub="a/b", tier="c"))[0]
    second = wsgi_call(app, token=make_token(sub="b", tier="c/a"))[0]
    assert (first, second) == (200, 200)


def test_a_per_tenant_rule_skips_clients_without_a_tenant(tracer_provider: Any) -> None:
    """A ``per="tenant"`` rule never puts every tenantless client into one counter."""
    app = mw(
        tracer_provider,
        jwt=jwt_config(tenant_claim="org"),
        rules=[LimitRule(name="org", limits="1/minute", per="tenant")],
    )
    assert wsgi_call(app, token=make_token(sub="alice", org="acme"))[0] == 200
    assert wsgi_call(app, token=make_token(sub="alice2", org="acme"))[0] == 429
    assert [wsgi_call(app, token=make_token(sub=f"solo-{i}"))[0] for i in range(3)] == [200] * 3


def test_a_request_asking_too_many_outputs_is_refused_before_any_window(tracer_provider: Any) -> None:
    """Past ``max_outputs`` (n times prompts or inputs) a request is 400 ``too_many_outputs``:
    one request must not write thousands of moving-window entries."""
    import json

    from tests.limiting.apps import chat_body

    app = mw(tracer_provider, default="1000000/day", max_outputs=64)
    status, _, body = wsgi_call(app, chat_body(n=65), token=make_token())
    assert status == 400 and json.loads(body)["code"] == "too_many_outputs"
    assert wsgi_call(app, chat_body(n=64), token=make_token())[0] == 200


def test_a_rule_per_all_is_one_counter_for_every_client(tracer_provider: Any) -> None:
    """``LimitRule(per="all")`` counts every client together (a model's capacity): the third
    request of 3/minute is refused whoever sends it; the refusal names the rule without its
    quota and sends no RateLimit fields, and the allowed answers never disclose the shared
    window (only the client's own)."""
    rules = [LimitRule(name="capacity", limits="3/minute", per="all", models=["big"])]
    app = mw(tracer_provider, rules=rules)
    big = chat_body(model="big")
    statuses = []
    for sub in ("a", "b", "a"):
        status, headers, _ = wsgi_call(app, big, token=make_token(sub=sub))
        statuses.append(status)
        assert "capacity" not in headers.get("ratelimit-policy", "") and "ratelimit-policy" in headers
    assert statuses == [200, 200, 200]
    status, headers, body = wsgi_call(app, big, token=make_token(sub="c"))
    assert status == 429 and "ratelimit" not in headers
    assert json.loads(body)["violated-policies"] == ["capacity"] and b"3-per-1-minute" not in body
    assert wsgi_call(app, chat_body(model="small"), token=make_token(sub="c"))[0] == 200  # another model
    with pytest.raises(ConfigurationError):
        LimitRule(name="x", limits="1/minute", per="everyone")  # type: ignore[arg-type]

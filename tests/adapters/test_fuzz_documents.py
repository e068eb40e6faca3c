"""Hostile OpenAI-style documents through both adapters, with every built-in detector and the
risk policy: whatever the fields hold (wrong types, huge or non-finite numbers, nesting, lone
surrogates, odd content types), the guard answers 200 or a problem with a ``code``, never fails
itself, no built-in detector raises, and an admitted request reaches the app byte for byte (or,
degraded, as valid JSON)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from distillguard import DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, LimitConfig, Policy
from distillguard.detectors.defaults import default_detectors
from distillguard.detectors.semantic import SemanticCoverageDetector
from distillguard.risk import RiskPolicy
from tests.helpers import EchoASGIApp, EchoWSGIApp, jwt_config, make_token
from tests.limiting.apps import asgi_call, wsgi_call

pytestmark = pytest.mark.timeout(300)

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(
        [2**63, -(2**63) - 1, 10**400, -(10**400), 0, 1, -1, 5e-324, -1e-310, 1.7976931348623157e308]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
# vectors whose features may all be zeros or subnormals, or all huge
VECTOR = st.lists(
    st.sampled_from([0.0, 5e-324, -1e-310, 1e-300, 1.0, 1e308]) | NUMBERS, min_size=1, max_size=6
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=30))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
TEXT = st.text(max_size=300) | st.sampled_from(["\ud800 lone", "a" * 5000, "", " ", "{{q}}"])
PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}) | VALUES
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "tool"]) | VALUES,
        "content": TEXT | st.lists(PART, max_size=3) | VALUES,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["m1", "m2"]) | VALUES,
        "messages": st.lists(MESSAGE | VALUES, max_size=4) | VALUES,
        "prompt": TEXT | st.lists(TEXT, max_size=3) | VALUES,
        "input": TEXT | st.lists(VECTOR, max_size=3) | VALUES,
        "instances": st.lists(VECTOR, max_size=3) | VALUES,
        "max_tokens": NUMBERS | VALUES,
        "max_completion_tokens": NUMBERS | VALUES,
        "n": st.integers(min_value=-3, max_value=10**7) | VALUES,
        "logprobs": st.booleans() | NUMBERS | VALUES,
        "top_logprobs": NUMBERS | VALUES,
        "logit_bias": st.dictionaries(st.text(max_size=6), NUMBERS | VALUES, max_size=6) | VALUES,
        "temperature": NUMBERS | VALUES,
        "stream": st.booleans() | VALUES,
    },
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "Application/JSON; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
    ]
)
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/predict"])
ALLOWED = {200, 400, 403, 413, 429}


def make_guard() -> Guard:
    return Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000000/minute"),
        detectors=[*default_detectors(), "campaign", SemanticCoverageDetector(embedder="hashed")],
        policy=Policy(risk=RiskPolicy(), degrade_max_tokens=64),
        max_body_bytes=65_536,
    )


class Target:
    """One adapter around an echo app, guarded by one guard for the whole run (its detectors'
    state accumulates across examples)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.guard = make_guard()
        self.loop = asyncio.new_event_loop()
        self.app: Any = EchoASGIApp() if kind == "asgi" else EchoWSGIApp()
        wrap: Any = DistillGuardMiddleware if kind == "asgi" else DistillGuardWSGIMiddleware
        self.mw = wrap(self.app, guard=self.guard)

    def call(
        self, body: bytes, headers: dict[str, str], path: str, token: str
    ) -> tuple[int, dict[str, str], bytes]:
        if self.kind == "asgi":
            return self.loop.run_until_complete(
                asgi_call(self.mw, body, token=token, headers=headers, path=path)
            )
        status, out, payload = wsgi_call(self.mw, body, token=token, headers=headers, path=path)
        return status, out, payload


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    made = Target(request.param)
    yield made
    made.loop.close()


TOKENS = [make_token(sub=f"fuzz-{i}", exp=4_000_000_000) for i in range(3)]


def encode(doc: dict[str, Any], ascii_only: bool) -> bytes:
    text = json.dumps(doc, ensure_ascii=ascii_only)  # NaN and Infinity as Python writes them
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate with ensure_ascii=False
        return json.dumps(doc).encode()


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def check(target: Target, body: bytes, content_type: str, path: str, who: int) -> None:
    """One request: an answer, no failure, the app's bytes unchanged unless degraded."""
    before = len(target.app.calls)
    headers = {"content-type": content_type} if content_type else {}
    status, out, payload = target.call(body, headers, path, TOKENS[who])
    assert status in ALLOWED, (status, payload[:200])
    assert target.guard._internal_errors == {}
    if status != 200:
        assert out["content-type"] == "application/problem+json"
        assert isinstance(json.loads(payload)["code"], str)
        assert len(target.app.calls) == before
        return
    assert len(target.app.calls) == before + 1
    call = target.app.calls[-1]
    decision = call.decision
    assert not [e for e in decision.errors if e.startswith(("detector:", "guard:"))], decision.errors
    if decision.action.value == "degrade" and call.body != body:
        json.loads(call.body)  # rebuilt from the client's bytes, still JSON
    else:
        assert call.body == body


@FUZZ
@given(
    doc=DOCUMENT,
    ascii_only=st.booleans(),
    content_type=CONTENT_TYPES,
    path=PATHS,
    who=st.integers(min_value=0, max_value=2),
)
def test_any_document_gets_an_answer_and_no_failure(
    target: Target, doc: dict[str, Any], ascii_only: bool, content_type: str, path: str, who: int
) -> None:
    check(target, encode(doc, ascii_only), content_type, path, who)


@FUZZ
@given(
    rows=st.lists(VECTOR, min_size=1, max_size=3), key=st.sampled_from(["instances", "inputs", "features"])
)
def test_any_predict_vector_gets_an_answer_and_no_failure(
    target: Target, rows: list[list[Any]], key: str
) -> None:
    """A classic predict body whose features are zeros, subnormals, huge or non-finite."""
    features: Any = rows[0] if key == "features" else rows
    check(target, encode({key: features}, True), "application/json", "/v1/predict", 0)

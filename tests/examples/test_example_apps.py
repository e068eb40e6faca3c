"""The FastAPI and Flask examples over real HTTP, driven by the official ``openai`` client."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import openai
import pytest
from examples.make_token import mint_token
from examples.mock_llm import reply_tokens

from tests.examples.conftest import ENV, KINDS, Serve

Client = Callable[[str, str], openai.OpenAI]

pytestmark = pytest.mark.parametrize("kind", KINDS)

PROMPT = "What is a good name for a grey kitten?"


def _token(sub: str = "alice", **claims: object) -> str:
    return mint_token(sub, tier="free", environ=ENV, **claims)  # type: ignore[arg-type]


def _ask(client: openai.OpenAI, **extra: Any) -> object:
    return client.chat.completions.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": PROMPT}], **extra
    )


def test_chat_completion(kind: str, serve: Serve, openai_client: Client) -> None:
    """A valid token gets a deterministic chat completion with consistent usage."""
    client = openai_client(serve(kind), _token())
    first = client.chat.completions.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": PROMPT}]
    )
    second = client.chat.completions.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": PROMPT}]
    )
    expected = "".join(reply_tokens(PROMPT))
    assert first.choices[0].message.content == expected == second.choices[0].message.content
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].finish_reason == "stop"
    assert first.choices[0].logprobs is None
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens == len(PROMPT.split())
    assert usage.completion_tokens == len(reply_tokens(PROMPT))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    other = client.chat.completions.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": "Something else entirely?"}]
    )
    assert other.choices[0].message.content != expected


def test_logprobs_and_max_tokens(kind: str, serve: Serve, openai_client: Client) -> None:
    """``logprobs``/``top_logprobs`` are answered per token, and ``max_tokens`` truncates."""
    client = openai_client(serve(kind), _token())
    reply = client.chat.completions.create(
        model="distillguard-mock-1",
        messages=[{"role": "user", "content": PROMPT}],
        logprobs=True,
        top_logprobs=3,
        max_tokens=2,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content == "".join(reply_tokens(PROMPT)[:2])
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert [t.token for t in choice.logprobs.content] == reply_tokens(PROMPT)[:2]
    assert all(len(t.top_logprobs) == 3 and t.logprob < 0 for t in choice.logprobs.content)
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_streaming(kind: str, serve: Serve, openai_client: Client) -> None:
    """``stream: true`` arrives as SSE chunks that add up to the JSON reply, then a usage chunk."""
    client = openai_client(serve(kind), _token())
    whole = client.chat.completions.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": PROMPT}]
    )
    stream = client.chat.completions.create(
        model="distillguard-mock-1",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(chunks) == len(reply_tokens(PROMPT)) + 3  # role, tokens, finish, usage
    assert "".join(content) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_missing_token(kind: str, serve: Serve, openai_client: Client) -> None:
    """No ``Authorization`` header raises AuthenticationError carrying ``missing_token``."""
    client = openai_client(serve(kind), _token())
    with pytest.raises(openai.AuthenticationError) as caught:
        _ask(client, extra_headers={"Authorization": openai.omit})
    error = caught.value
    assert error.status_code == 401
    assert error.code == "missing_token"
    assert isinstance(error.body, dict) and error.body["status"] == 401
    assert error.response.headers["content-type"] == "application/problem+json"
    assert error.response.headers["www-authenticate"] == 'Bearer realm="api"'


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: "not-a-jwt", id="garbage"),
        pytest.param(
            lambda: mint_token("alice", environ={**ENV, "DISTILLGUARD_JWT_SECRET": "x" * 40}), id="forged"
        ),
        pytest.param(lambda: mint_token("alice", environ=ENV, now=time.time() - 7200, ttl=60), id="expired"),
        pytest.param(lambda: mint_token("alice", environ={}), id="dev-token"),
        pytest.param(
            lambda: jwt.encode(
                {"sub": "a", "iss": ENV["DISTILLGUARD_JWT_ISSUER"], "aud": "other", "iat": 0, "exp": 2**40},
                ENV["DISTILLGUARD_JWT_SECRET"],
                algorithm="HS256",
            ),
            id="wrong-audience",
        ),
    ],
)
def test_invalid_token(kind: str, token: Callable[[], str], serve: Serve, openai_client: Client) -> None:
    """Any bad token raises AuthenticationError with the one generic ``invalid_token`` body."""
    client = openai_client(serve(kind), token())
    with pytest.raises(openai.AuthenticationError) as caught:
        _ask(client)
    error = caught.value
    assert error.code == "invalid_token"
    assert isinstance(error.body, dict)
    assert error.body["detail"] == "The bearer token is not valid."
    assert 'error="invalid_token"' in error.response.headers["www-authenticate"]


def test_rate_limit(kind: str, serve: Serve, openai_client: Client) -> None:
    """Past ``DISTILLGUARD_LIMITS`` the client raises RateLimitError with ``Retry-After``."""
    client = openai_client(serve(kind, {**ENV, "DISTILLGUARD_LIMITS": "2/minute"}), _token())
    first = client.chat.completions.with_raw_response.create(
        model="distillguard-mock-1", messages=[{"role": "user", "content": PROMPT}]
    )
    assert '"2-per-1-minute";q=2;w=60' in first.headers["ratelimit-policy"]
    assert "r=1" in first.headers["ratelimit"]
    _ask(client)
    with pytest.raises(openai.RateLimitError) as caught:
        _ask(client)
    error = caught.value
    assert error.code == "rate_limited"
    assert 0 < int(error.response.headers["retry-after"]) <= 60
    other = openai_client(serve(kind, {**ENV, "DISTILLGUARD_LIMITS": "2/minute"}), _token("bob"))
    assert _ask(other) is not None  # limits are per client (and per app instance)


def test_body_over_cap(kind: str, serve: Serve, openai_client: Client) -> None:
    """A body over ``DISTILLGUARD_MAX_BODY_BYTES`` gets 413 ``request_too_large``."""
    client = openai_client(serve(kind, {**ENV, "DISTILLGUARD_MAX_BODY_BYTES": "2048"}), _token())
    assert _ask(client) is not None
    # The guard answers 413, then reads and drops the rest of the body before the server closes
    # the connection, so the client reads the answer (no reset, no retry needed).
    client = client.with_options(max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="distillguard-mock-1", messages=[{"role": "user", "content": "word " * 1000}]
        )
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


def test_app_errors_pass_through(kind: str, serve: Serve, openai_client: Client) -> None:
    """The mock's own OpenAI-style 400 reaches the client as BadRequestError."""
    client = openai_client(serve(kind), _token())
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="distillguard-mock-1", messages=[])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "messages"


def test_healthz_is_exempt(kind: str, serve: Serve) -> None:
    """``GET /healthz`` answers without a token."""
    response = httpx.get(serve(kind) + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "ratelimit" not in response.headers

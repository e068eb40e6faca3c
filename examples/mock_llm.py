"""A deterministic stand-in for a chat model, in OpenAI's wire format (no framework, no I/O).

Both example apps serve ``POST /v1/chat/completions`` with these functions. The reply is a
sentence chosen by a hash of the prompt and model, so the same request always gets the same
answer (the tests rely on it). Tokens are words; log probabilities are derived from the same hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["chat_chunks", "chat_completion", "invalid_request", "reply_tokens", "sse_events"]

MODEL = "distillguard-mock-1"

_WORDS = (
    "the",
    "model",
    "answers",
    "every",
    "question",
    "with",
    "a",
    "calm",
    "and",
    "careful",
    "sentence",
    "about",
    "data",
    "signals",
    "weights",
    "layers",
    "tokens",
    "gradients",
    "context",
    "windows",
    "latency",
    "budgets",
    "caches",
    "queues",
    "clusters",
    "replicas",
    "shards",
    "vectors",
    "embeddings",
    "prompts",
    "completions",
    "samples",
    "features",
    "labels",
    "metrics",
    "traces",
    "spans",
    "limits",
    "quotas",
    "policies",
    "clients",
    "tenants",
    "requests",
    "responses",
    "streams",
    "errors",
)  # fmt: skip


def _seed(*parts: str) -> bytes:
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "surrogatepass"), digest_size=32).digest()


def _prompt(body: Mapping[str, Any]) -> str:
    texts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            )
    return "\n".join(texts)


def reply_tokens(prompt: str, model: str = MODEL, choice: int = 0) -> list[str]:
    """The full (untruncated) reply to ``prompt``, as tokens: words with their leading space."""
    seed = _seed(prompt, model, str(choice))
    length = 8 + seed[0] % 12
    words = [_WORDS[seed[1 + i] % len(_WORDS)] for i in range(length)]
    words[0] = words[0].capitalize()
    return [words[0], *(" " + w for w in words[1:]), "."]


def _logprob(token: str, position: int, seed: bytes) -> float:
    h = _seed(token, str(position), seed.hex())
    return -round(h[0] / 255 * 2.5 + 0.01, 4)


def _logprobs(tokens: list[str], top: int, seed: bytes, offset: int = 0) -> list[dict[str, Any]]:
    content = []
    for i, token in enumerate(tokens, start=offset):
        lp = _logprob(token, i, seed)
        alternatives = [{"token": token, "logprob": lp, "bytes": list(token.encode())}]
        for k in range(1, top):
            alt = " " + _WORDS[(seed[i % 32] + k) % len(_WORDS)]
            alternatives.append(
                {"token": alt, "logprob": round(lp - 0.5 * k - 0.25, 4), "bytes": list(alt.encode())}
            )
        content.append(
            {"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": alternatives[:top]}
        )
    return content


def invalid_request(body: object) -> dict[str, Any] | None:
    """An OpenAI-style error body when ``body`` is not a chat request, else ``None``."""

    def error(message: str, param: str | None) -> dict[str, Any]:
        return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}

    if not isinstance(body, Mapping):
        return error("The request body must be a JSON object.", None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return error("'messages' must be a non-empty array.", "messages")
    for key in ("max_tokens", "max_completion_tokens", "n", "top_logprobs"):
        value = body.get(key)
        if value is not None and _count(value) is None:
            return error(f"'{key}' must be a non-negative integer.", key)
    return None


def _count(value: object) -> int | None:
    """A non-negative integer field (``8`` or ``8.0``, as JSON Schema and OpenAI-compatible
    servers take it), or ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


def _plan(body: Mapping[str, Any]) -> tuple[str, str, int, int | None, int | None]:
    """``(prompt, model, n, max tokens, top_logprobs)`` of a validated request."""
    model = body.get("model")
    cap = _count(body.get("max_completion_tokens", body.get("max_tokens")))
    top = (_count(body.get("top_logprobs")) or 0) if body.get("logprobs") is True else None
    n = _count(body.get("n")) or 1
    return _prompt(body), model if isinstance(model, str) else MODEL, max(1, n), cap, top


def _usage(prompt: str, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = len(prompt.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _ident(prompt: str, model: str) -> str:
    return "chatcmpl-" + _seed("id", prompt, model).hex()[:24]


def chat_completion(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object answering ``body`` (already validated)."""
    prompt, model, n, cap, top = _plan(body)
    choices = []
    used = 0
    for index in range(n):
        tokens = reply_tokens(prompt, model, index)
        served = tokens if cap is None else tokens[:cap]
        used += len(served)
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": "".join(served), "refusal": None},
                "logprobs": None
                if top is None
                else {"content": _logprobs(served, top, _seed(prompt, model, str(index)))},
                "finish_reason": "length" if len(served) < len(tokens) else "stop",
            }
        )
    return {
        "id": _ident(prompt, model),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(prompt, used),
        "system_fingerprint": "fp_distillguard_mock",
    }


def chat_chunks(body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer to ``body``: a role chunk,
    one chunk per token, a finish chunk per choice, then a usage chunk when
    ``stream_options.include_usage`` is set."""
    prompt, model, n, cap, top = _plan(body)
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
    base = {
        "id": _ident(prompt, model),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_distillguard_mock",
    }
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**base, "choices": [choice]}

    used = 0
    for index in range(n):
        tokens = reply_tokens(prompt, model, index)
        served = tokens if cap is None else tokens[:cap]
        used += len(served)
        seed = _seed(prompt, model, str(index))
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None}, None)
        for position, token in enumerate(served):
            logprobs = None if top is None else {"content": _logprobs([token], top, seed, position)}
            yield chunk(index, {"content": token}, None, logprobs)
        yield chunk(index, {}, "length" if len(served) < len(tokens) else "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": _usage(prompt, used)}


def sse_events(chunks: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    """Server-sent events for ``chunks``: ``data: {...}`` frames, then ``data: [DONE]``."""
    for item in chunks:
        yield b"data: " + json.dumps(item, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"

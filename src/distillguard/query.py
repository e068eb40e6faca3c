"""Parsing a request body into a :class:`Query`: what the client asked the model.

OpenAI-style chat, completion and embedding bodies are recognised by their keys (not by their
path, so that gateways with other routes work too). Classic predict bodies (``inputs``,
``instances`` or ``features`` holding numbers) give a numeric vector. Anything else still passes
through untouched; its :class:`Query` only carries the size.

The prompt text is kept in memory for the detectors; it never leaves the process through
telemetry, logs or error bodies: only :attr:`Query.fingerprint`, a keyed-free hash, does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Query", "QueryKind", "finite_float", "parse_query"]

QueryKind = str
"""One of ``"chat"``, ``"completion"``, ``"embedding"``, ``"vector"``, ``"json"``, ``"raw"``,
``"empty"``."""

_MAX_VECTOR = 65_536
_decode = json.JSONDecoder().decode


def _loads(body: bytes) -> Any:
    """``json.loads(body)``, without its encoding detection for the usual case: a body that
    starts with ``{`` or ``[`` followed by a non-zero byte can only be UTF-8 (UTF-16 and
    UTF-32 put zero bytes or a BOM first), so it is decoded as such directly."""
    if body[:1] in (b"{", b"[") and body[1:2] != b"\x00":
        return _decode(body.decode("utf-8", "surrogatepass"))
    return json.loads(body)


_JSON_FIRST = (b"{", b"[")
_JSON_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _json_like(body: bytes) -> bool:
    """Whether ``body`` may be a JSON document whatever its ``Content-Type`` says: an object
    or array after JSON whitespace or a UTF-8 byte order mark, or UTF-16/32 text (a zero byte
    among the first four). ``json.loads`` (and so Starlette's ``request.json()`` and most
    frameworks) reads all of these, so the guard must see them as JSON too: a body it took for
    opaque bytes would pass its detectors, token limits and degrade step unseen."""
    head = body[:64]
    if b"\x00" in head[:4]:
        return True
    if head.startswith(_BOM):
        head = head[3:]
    return head.lstrip(_JSON_SPACE)[:1] in _JSON_FIRST


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """What one request asks of the model. Built by :func:`parse_query`.

    Attributes:
        kind: the body's shape (see :data:`QueryKind`).
        text: the prompt text (chat messages joined by newlines, completion prompts, embedding
            inputs). Empty for non-text bodies.
        model: the requested ``model``, if any.
        max_tokens: ``max_completion_tokens`` or ``max_tokens``.
        n: number of choices requested (``n``), at least 1.
        logprobs: whether log probabilities were requested.
        top_logprobs: how many alternatives per token (``top_logprobs``, or the legacy integer
            ``logprobs`` of completions).
        logit_bias: the ``logit_bias`` map as sorted ``(token_id, bias)`` pairs.
        stream: ``stream: true``.
        temperature: the sampling temperature, if given.
        inputs: number of separate inputs (a batch of prompts or embeddings).
        vector: the numeric input of a classic predict request (the first row of a batch).
        size: the body size in bytes.
        data: the parsed JSON object, when the body was a JSON object.
    """

    kind: QueryKind = "empty"
    text: str = ""
    model: str | None = None
    max_tokens: int | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: tuple[tuple[str, float], ...] = ()
    stream: bool = False
    temperature: float | None = None
    inputs: int = 1
    vector: tuple[float, ...] | None = None
    size: int = 0
    data: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of the prompt text (never the text itself)."""
        return hashlib.blake2b(self.text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

    @property
    def is_text(self) -> bool:
        """Whether the query carries prompt text."""
        return self.kind in ("chat", "completion", "embedding") and bool(self.text)


def _int(value: object) -> int | None:
    """An integer field as an OpenAI-compatible server reads it: model servers built on
    pydantic (vLLM, SGLang, LiteLLM) take ``8.0`` and ``"8"`` for 8, so the guard must too, or
    ``"n": 8.0`` would be charged as one output and ``"top_logprobs": "20"`` seen as none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = _numeric(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})


def _flag(value: object) -> bool:
    """A boolean field read as pydantic's lax mode does (``true``, ``1``, ``"yes"``...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


def finite_float(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not a JSON number (a boolean, a
    string) or not a finite one (``NaN``, an integer of hundreds of digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # an integer of hundreds of digits (valid JSON)
        return None
    return f if math.isfinite(f) else None


def _numeric(value: object) -> object:
    """``value``, or the number a numeric string spells (``"100"``, ``" -5.5 "``): pydantic
    model servers take ``{"logit_bias": {"123": "100"}}`` and ``"temperature": "0"`` as numbers."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not 0 < len(text) <= 64:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _bias(value: object) -> float | None:
    """A ``logit_bias`` value; one too large for a float (a 400-digit integer, ``Infinity``) is
    kept at +/-1e308, so that its token id still counts as biased: dropping it would hide the
    key from the detectors. ``NaN`` and non-numbers are dropped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return _HUGE if value > 0 else -_HUGE
    if math.isnan(f):
        return None
    return f if math.isfinite(f) else math.copysign(_HUGE, f)


_HUGE = 1e308


def _content_text(content: object, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)


_TOKEN_LETTERS = str.maketrans("0123456789", "bcdfghjklm")
_MAX_TOKEN_IDS = 8192
"""At most this many token ids of a request are read (a 1 MB body holds ~200,000)."""


def _is_ids(value: list[object]) -> bool:
    return bool(value) and all(type(v) is int for v in value)


def _token_words(ids: list[object], budget: int) -> str:
    """Token ids (a prompt sent pre-tokenised, as vLLM and OpenAI's completions and embeddings
    accept) as text the detectors can read: one word per id, its digits spelled with
    consonants (``1212`` is ``cdcd``), so that a repeated id is a repeated word and no id reads
    as a common English word."""
    return " ".join(map(str, ids[:budget])).translate(_TOKEN_LETTERS)


def _texts(value: object, out: list[str]) -> int:
    """Collect prompt strings from ``prompt``/``input`` (token ids as words: :func:`_token_words`);
    return how many inputs there were."""
    if isinstance(value, str):
        out.append(value)
        return 1
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            out.extend(value)
            return len(value)
        if _is_ids(value):
            out.append(_token_words(value, _MAX_TOKEN_IDS))
            return 1
        if value and all(isinstance(v, list) for v in value):
            budget = _MAX_TOKEN_IDS
            for ids in value:
                if budget > 0 and _is_ids(ids):
                    out.append(_token_words(ids, budget))
                    budget -= len(ids)
            return len(value)
        return 1
    return 1


def _vector(value: object) -> tuple[tuple[float, ...] | None, int]:
    rows = value
    count = 1
    if isinstance(rows, list) and rows and isinstance(rows[0], list):
        count = len(rows)
        rows = rows[0]
    if isinstance(rows, Mapping):
        rows = list(rows.values())
    if not isinstance(rows, list) or not rows or len(rows) > _MAX_VECTOR:
        return None, count
    out: list[float] = []
    for v in rows:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "infinity"):
                out.append(float(v))
                continue
            return None, count
        try:
            out.append(float(v))
        except OverflowError:  # an integer too large for a float: out of any feature range
            out.append(math.inf if v > 0 else -math.inf)
    return tuple(out), count


_RESPONSES_ONLY = frozenset(
    {
        "instructions",
        "max_output_tokens",
        "previous_response_id",
        "conversation",
        "reasoning",
        "include",
        "tools",
        "text",
        "store",
        "stream",
        "top_logprobs",
        "temperature",
        "top_p",
        "truncation",
        "background",
    }
)
"""Fields of an OpenAI Responses API request that an embeddings request never carries."""
RESPONSES_LOGPROBS = "message.output_text.logprobs"
"""The ``include`` entry that asks the Responses API for the answer's log probabilities."""


def _is_responses(data: Mapping[str, Any], path: str) -> bool:
    """Whether a body with ``input`` is a Responses API request rather than an embeddings one:
    its path says so, it carries a field embeddings never do, or its input is a list of items
    (messages), not of strings or token arrays."""
    if path.rstrip("/").endswith("/responses"):
        return True
    if not _RESPONSES_ONLY.isdisjoint(data):
        return True
    value = data.get("input")
    return isinstance(value, list) and any(isinstance(item, Mapping) for item in value)


def parse_query(body: bytes, content_type: str = "application/json", path: str = "") -> Query:
    """Parse a request body into a :class:`Query`. Never raises.

    Args:
        body: the raw request body.
        content_type: the request's ``Content-Type``; bodies that are not JSON (by type or by
            content) give a ``"raw"`` query.
        path: the request's path: ``.../responses`` tells an OpenAI Responses API request
            whose body is only ``model`` and ``input`` from an embeddings one.
    """
    size = len(body)
    if not body:
        return Query(kind="empty")
    if body[:1] not in _JSON_FIRST and "json" not in content_type.lower() and not _json_like(body):
        return Query(kind="raw", size=size)
    try:
        data = _loads(body)
    except (ValueError, RecursionError):
        return Query(kind="raw", size=size)
    if not isinstance(data, dict):
        return Query(kind="json", size=size)

    texts: list[str] = []
    inputs = 1
    vector: tuple[float, ...] | None = None
    if isinstance(data.get("messages"), list):
        kind = "chat"
        for message in data["messages"]:
            if isinstance(message, Mapping):
                _content_text(message.get("content"), texts)
    elif "prompt" in data:
        kind = "completion"
        inputs = _texts(data["prompt"], texts)
    elif "input" in data and _is_responses(data, path):  # OpenAI's Responses API: a conversation
        kind = "chat"
        if isinstance(data.get("instructions"), str):
            texts.append(data["instructions"])
        value = data["input"]
        if isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    _content_text(item.get("content"), texts)
                elif isinstance(item, str):
                    texts.append(item)
        else:
            _content_text(value, texts)
    elif "input" in data and "model" in data:
        kind = "embedding"
        inputs = _texts(data["input"], texts)
    else:
        kind = "json"
        for key in ("inputs", "instances", "features", "data", "x"):
            if key in data:
                vector, inputs = _vector(data[key])
                if vector is not None:
                    kind = "vector"
                break

    logprobs_field = data.get("logprobs")
    include = data.get("include")
    if isinstance(include, list) and RESPONSES_LOGPROBS in include:
        logprobs_field = True  # the Responses API asks for log probabilities this way
    top = _int(data.get("top_logprobs"))
    if top is None and kind == "completion":
        top = _int(logprobs_field)  # legacy completions: logprobs is an integer
    bias_raw = data.get("logit_bias")
    bias: tuple[tuple[str, float], ...] = ()
    if isinstance(bias_raw, Mapping):
        pairs = []
        for k, v in bias_raw.items():
            fv = _bias(_numeric(v))
            if fv is not None:
                pairs.append((str(k), fv))
        bias = tuple(sorted(pairs))
    max_tokens = _int(data.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = _int(data.get("max_tokens"))
    if max_tokens is None:
        max_tokens = _int(data.get("max_output_tokens"))  # the Responses API
    n = _int(data.get("n"))
    model = data.get("model")
    return Query(
        kind=kind,
        text="\n".join(texts),
        model=model if isinstance(model, str) else None,
        max_tokens=max_tokens,
        n=n if n is not None and n > 0 else 1,
        logprobs=_flag(logprobs_field) or (top is not None and top > 0),
        top_logprobs=top,
        logit_bias=bias,
        stream=_flag(data.get("stream")),
        temperature=finite_float(_numeric(data.get("temperature"))),
        inputs=max(inputs, 1),
        vector=vector,
        size=size,
        data=data,
    )

"""Parsing request bodies into a :class:`~distillguard.Query`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from distillguard.query import parse_query

pytestmark = pytest.mark.timeout(30)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_chat_body() -> None:
    """An OpenAI chat body gives its prompt text, model, limits and sampling fields."""
    q = parse_query(
        body(
            model="gpt-test",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "image_url"}]},
                {"role": "user", "content": "part two"},
            ],
            max_completion_tokens=64,
            max_tokens=10,
            n=3,
            logprobs=True,
            top_logprobs=5,
            logit_bias={"50256": -100, "11": 2.5},
            stream=True,
            temperature=0.2,
        )
    )
    assert q.kind == "chat"
    assert q.text == "be brief\npart one\npart two"
    assert q.model == "gpt-test"
    assert q.max_tokens == 64  # max_completion_tokens wins
    assert (q.n, q.logprobs, q.top_logprobs, q.stream, q.temperature) == (3, True, 5, True, 0.2)
    assert q.logit_bias == (("11", 2.5), ("50256", -100.0))
    assert q.is_text


def test_completion_legacy_logprobs() -> None:
    """A completion's integer ``logprobs`` is the number of alternatives per token."""
    q = parse_query(body(model="m", prompt=["a", "b"], logprobs=5))
    assert q.kind == "completion" and q.text == "a\nb" and q.inputs == 2
    assert q.logprobs and q.top_logprobs == 5


def test_embedding_batch() -> None:
    """An embeddings body counts its inputs; token-array batches count too, their ids read as
    words (digits spelled with consonants)."""
    q = parse_query(body(model="e", input=["x", "y", "z"]))
    assert (q.kind, q.inputs, q.text) == ("embedding", 3, "x\ny\nz")
    tokens = parse_query(body(model="e", input=[[1, 2], [3]]))
    assert (tokens.kind, tokens.inputs, tokens.text) == ("embedding", 2, "c d\nf")
    huge = parse_query(body(model="e", input=[list(range(6000)), list(range(6000))]))
    assert len(huge.text.split()) == 8192  # at most 8,192 ids read


@pytest.mark.parametrize(
    ("payload", "vector", "inputs"),
    [
        pytest.param({"inputs": [1, 2.5, 3]}, (1.0, 2.5, 3.0), 1, id="flat"),
        pytest.param({"instances": [[1, 2], [3, 4], [5, 6]]}, (1.0, 2.0), 3, id="batch-first-row"),
        pytest.param({"features": {"a": 1, "b": 2}}, (1.0, 2.0), 1, id="named-features"),
        pytest.param({"inputs": ["a", 1]}, None, 1, id="not-numeric"),
    ],
)
def test_predict_vectors(payload: dict[str, Any], vector: tuple[float, ...] | None, inputs: int) -> None:
    """Classic predict bodies give a numeric vector (the first row of a batch)."""
    q = parse_query(json.dumps(payload).encode())
    assert q.vector == vector and q.inputs == inputs
    assert q.kind == ("vector" if vector is not None else "json")


@pytest.mark.parametrize(
    ("raw", "content_type", "kind"),
    [
        pytest.param(b"", "application/json", "empty", id="empty"),
        pytest.param(b"hello", "text/plain", "raw", id="text"),
        pytest.param(b"{not json", "application/json", "raw", id="broken-json"),
        pytest.param(b"[1,2]", "application/json", "json", id="json-array"),
        pytest.param(b'{"a":1}', "application/octet-stream", "json", id="json-without-type"),
        pytest.param(b"\xff\xfe{", "application/json", "raw", id="invalid-utf8"),
        pytest.param(b"[" * 100_000, "application/json", "raw", id="deeply-nested"),
        pytest.param(b'{"a":"\xff"}', "application/json", "raw", id="invalid-utf8-in-object"),
    ],
)
def test_other_bodies(raw: bytes, content_type: str, kind: str) -> None:
    """Non-chat bodies still parse to a Query of the right kind, with their size."""
    q = parse_query(raw, content_type)
    assert q.kind == kind and q.size == len(raw) and q.text == ""


def test_utf16_json() -> None:
    """JSON in UTF-16 (allowed by RFC 8259 readers such as ``json.loads``) still parses."""
    q = parse_query(json.dumps({"prompt": "hé"}).encode("utf-16"))
    assert q.kind == "completion" and q.text == "hé"


def test_wrong_types_are_ignored() -> None:
    """Fields of the wrong type are ignored rather than trusted."""
    q = parse_query(body(messages=[{"content": 5}, "x"], max_tokens="ten", n=0, temperature="hot", model=3))
    assert q.kind == "chat" and q.text == ""
    assert (q.max_tokens, q.n, q.temperature, q.model) == (None, 1, None, None)
    nan = parse_query(b'{"prompt":"p","temperature":NaN,"logit_bias":{"1":"x","2":NaN,"3":-Infinity}}')
    assert nan.temperature is None and nan.logit_bias == (("3", -1e308),)  # still a biased token


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"n": 8.0, "max_tokens": 4000.0, "top_logprobs": 20.0}, (8, 4000, 20, True)),
        ({"n": "8", "max_tokens": " 4000 ", "top_logprobs": "20"}, (8, 4000, 20, True)),
        ({"n": "8.0", "logprobs": "true"}, (8, None, None, True)),
        ({"n": 8.5, "max_tokens": "1e400", "top_logprobs": "NaN", "logprobs": "no"}, (1, None, None, False)),
        ({"n": True, "max_tokens": False, "logprobs": 1}, (1, None, None, True)),
    ],
)
def test_numbers_are_read_as_openai_compatible_servers_read_them(
    fields: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    """Model servers built on pydantic (vLLM, SGLang, LiteLLM) take ``8.0`` and ``"8"`` for an
    integer, ``"true"`` for a boolean and ``"-100"`` for a bias; the guard reads them the same
    way, or ``"n": 8.0``
    would be charged one output and ``"top_logprobs": "20"`` would hide a logprob probe. A
    number with a fraction, and ``true`` for a count, are still ignored."""
    q = parse_query(body(messages=[{"role": "user", "content": "x"}], **fields))
    assert (q.n, q.max_tokens, q.top_logprobs, q.logprobs) == expected
    lax = parse_query(
        body(messages=[], logit_bias={"50256": "-100", "11": " 5.5 ", "7": "x"}, temperature="0")
    )
    assert lax.logit_bias == (("11", 5.5), ("50256", -100.0)) and lax.temperature == 0.0
    assert parse_query(body(messages=[], stream="true")).stream
    assert not parse_query(body(messages=[], stream="no")).stream


def test_fingerprint_is_a_hash_of_the_text() -> None:
    """Equal prompts share a 16-hex-digit fingerprint that does not contain the text."""
    a = parse_query(body(messages=[{"role": "user", "content": "secret words"}], model="x"))
    b = parse_query(body(prompt="secret words", temperature=1))
    c = parse_query(body(prompt="other words"))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 16 and int(a.fingerprint, 16) >= 0
    assert "secret" not in a.fingerprint


def test_repr_hides_the_parsed_document() -> None:
    """``repr(query)`` does not dump the raw JSON document."""
    q = parse_query(body(prompt="p", api_key="sk-should-not-print"))
    assert "sk-should-not-print" not in repr(q)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["application/json", "text/plain", ""]))
def test_never_raises_on_bytes(raw: bytes, content_type: str) -> None:
    """Arbitrary bytes never make the parser raise."""
    q = parse_query(raw, content_type)
    assert q.size == len(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    ["messages", "prompt", "input", "model", "max_tokens", "n", "logprobs", "top_logprobs", "logit_bias",
     "stream", "temperature", "inputs", "instances", "content"]
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, json_values, max_size=8))
def test_never_raises_on_odd_json(doc: dict[str, Any]) -> None:
    """Any JSON object using the recognised keys with any value types parses without raising."""
    q = parse_query(json.dumps(doc).encode())
    assert q.n >= 1 and q.inputs >= 1
    assert isinstance(q.text, str)


@pytest.mark.parametrize(
    ("prefix", "content_type", "encoding"),
    [
        (b"", "APPLICATION/JSON", "utf-8"),
        (b" \t\r\n", "text/plain", "utf-8"),
        (b"\xef\xbb\xbf", "application/octet-stream", "utf-8"),
        (b"\xef\xbb\xbf \n", "", "utf-8"),
        (b"", "", "utf-16-le"),
        (b"", "text/plain", "utf-32"),
    ],
)
def test_json_is_json_however_it_is_labelled(prefix: bytes, content_type: str, encoding: str) -> None:
    """Whatever ``json.loads`` reads (leading whitespace, a UTF-8 BOM, UTF-16/32, any
    ``Content-Type`` in any case) the guard parses too: the app would."""
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}
    body = prefix + json.dumps(doc).encode(encoding)
    assert json.loads(body) == doc  # what a framework's request.json() gets
    query = parse_query(body, content_type)
    assert query.kind == "chat" and query.logprobs and query.text == "hi"


@pytest.mark.parametrize("raw", [b"hello {", b"  plain text", b"\xef\xbb\xbfnot json", b"a=1&b=[2]"])
def test_text_that_is_not_json_stays_raw(raw: bytes) -> None:
    assert parse_query(raw, "text/plain").kind == "raw"


def test_huge_numbers_never_break_parsing() -> None:
    """Integers of hundreds of digits (valid JSON, too large for a float) never raise: a
    logit_bias key keeps counting as biased, a huge temperature is dropped, a vector keeps
    its length."""
    huge = "1" + "0" * 400
    body = (
        '{"model":"m","messages":[{"role":"user","content":"x"}],'
        f'"logit_bias":{{"42":{huge},"7":-{huge},"9":NaN,"11":Infinity}},"temperature":{huge},'
        f'"n":{huge},"max_tokens":{huge}}}'
    ).encode()
    q = parse_query(body)
    assert q.kind == "chat" and q.temperature is None
    assert q.logit_bias == (("11", 1e308), ("42", 1e308), ("7", -1e308))
    assert q.n == int(huge) and q.max_tokens == int(huge)
    vector = parse_query(f'{{"inputs":[[1.5,{huge},2]]}}'.encode())
    assert vector.kind == "vector" and vector.vector is not None and len(vector.vector) == 3

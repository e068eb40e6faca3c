"""The keyed lexical watermark: marking swaps only group words (case kept, stream pieces
included), the test finds marked text and a copy that learnt it, and not natural text or
another key; both adapters mark chat and completion answers (JSON and streamed) and nothing
else."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from distillguard import ConfigurationError, DistillGuardMiddleware, DistillGuardWSGIMiddleware, Guard, Policy
from distillguard.watermark import GROUPS, StreamMarker, Watermark
from tests.helpers import jwt_config, make_token
from tests.limiting.apps import asgi_call, wsgi_call

KEY = b"a-secret-watermark-key-of-32-bytes"
WORDS = {w for group in GROUPS for w in group}
PROSE = (
    "Rivers often carry large amounts of sediment. Perhaps the most crucial example is the Nile, "
    "which is usually described as nearly completely dependent on rain far upstream. Furthermore, "
    "engineers frequently choose to modify channels; therefore floods are, maybe, less enormous. "
    "Often, OFTEN, often: it is an essential and a crucial question, an instance of a wonderful "
    "problem that several people assume is quickly solved."
)


def natural_texts() -> list[str]:
    """Every line of the English chatterbot corpus (natural, never marked)."""
    import chatterbot_corpus

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out: list[str] = []
    for path in sorted(root.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text("utf-8")).get("conversations", []):
            out.extend(line for line in conversation if isinstance(line, str))
    return out


def _skeleton(text: str) -> str:
    """``text`` with every group word replaced by a placeholder."""
    return re.sub(r"[A-Za-z]+", lambda m: "#" if m.group().lower() in WORDS else m.group(), text)


def test_marking_swaps_group_words_only_keeping_their_case() -> None:
    mark = Watermark(KEY).mark(PROSE)
    assert mark != PROSE
    assert _skeleton(mark) == _skeleton(PROSE)  # everything else byte for byte
    assert Watermark(KEY).mark(mark) == mark  # marking marked text changes nothing
    words = re.findall(r"[A-Za-z]+", mark)
    original = re.findall(r"[A-Za-z]+", PROSE)
    for new, old in zip(words, original, strict=True):
        if old.isupper() and len(old) > 1:
            assert new.isupper()
        elif old[0].isupper():
            assert new[0].isupper() and new[1:].islower()
    assert Watermark(b"another-key-entirely-different!!").mark(PROSE) != mark


def test_the_article_never_has_to_change() -> None:
    """After ``a``/``an``, a word is never swapped for one of the other vowel sound."""
    for key in range(50):
        mark = Watermark(f"key-number-{key:04d}-for-the-test").mark("It was an immense and a huge task.")
        assert re.search(r"\ban (huge|immense|enormous)\b", mark) is None or "an immense" in mark
        assert "a immense" not in mark and "an huge" not in mark and "an enormous" not in mark


@pytest.mark.parametrize("seed", range(20))
def test_a_stream_marks_as_the_whole_text(seed: int) -> None:
    """Cut anywhere (inside words too), the pieces marked in turn give ``mark`` of the whole."""
    rng = random.Random(seed)
    watermark = Watermark(KEY)
    cuts = sorted(rng.sample(range(1, len(PROSE)), rng.randint(1, 60)))
    pieces = [PROSE[a:b] for a, b in zip([0, *cuts], [*cuts, len(PROSE)], strict=True)]
    marker = StreamMarker(watermark)
    out = "".join(marker.feed(piece) for piece in pieces) + marker.flush()
    assert out == watermark.mark(PROSE)


def test_marked_text_and_a_copy_that_learnt_it_are_found_natural_text_is_not() -> None:
    from benchmarks.detection.corpora import jailbreaks

    watermark = Watermark(KEY)
    assert abs(watermark.evidence(natural_texts()).z) < 3  # chit-chat: few trials (about 50)
    natural = list(jailbreaks("tuning"))  # long prose: about 250 trials
    unmarked = watermark.evidence(natural)
    assert unmarked.trials >= 200 and abs(unmarked.z) < 3, unmarked
    marked = watermark.evidence(watermark.mark(t) for t in natural)
    assert marked.trials == unmarked.trials and marked.hits == marked.trials and marked.p_value < 1e-12
    # a copy that reproduces the keyed choice 60% of the time, else picks any group word
    rng = random.Random(3)

    def student(text: str) -> str:
        marked_text = watermark.mark(text)
        return re.sub(
            r"[A-Za-z]+",
            lambda m: (
                m.group()
                if m.group().lower() not in WORDS or rng.random() < 0.6
                else rng.choice(next(g for g in GROUPS if m.group().lower() in g))
            ),
            marked_text,
        )

    copied = watermark.evidence(student(t) for t in natural)
    assert copied.p_value < 1e-9, copied
    assert watermark.evidence([PROSE]).z < watermark.evidence([watermark.mark(PROSE)]).z


def test_the_test_is_calibrated_on_natural_prose() -> None:
    """On 666 long natural texts (the in-the-wild jailbreak prompts: ~225,000 words, which
    repeat phrases such as "for example" hundreds of times) the p-value is uniform over keys:
    about 5 keys in 100 reach p < 0.05 and 1 in 100 p < 0.01 (counting every occurrence
    instead of every context, half the keys did); marked, they are found beyond doubt, and
    another key finds nothing in the marked texts."""
    from benchmarks.detection.corpora import jailbreaks

    natural = [*jailbreaks("tuning"), *jailbreaks("holdout")]
    p_values = [Watermark(f"random-key-{i:04d}-xxxxxxxxxxxx").evidence(natural).p_value for i in range(200)]
    assert sum(p < 0.05 for p in p_values) <= 18  # 10 expected; binomial 99.9% bound
    assert sum(p < 0.01 for p in p_values) <= 7
    marked = [Watermark(KEY).mark(t) for t in natural]
    found = Watermark(KEY).evidence(marked)
    assert found.trials >= 300 and found.p_value < 1e-50
    assert Watermark(b"not-the-key-that-marked-the-text").evidence(marked).p_value > 0.001


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError):
        Watermark(b"short")
    with pytest.raises(ConfigurationError):
        Watermark(KEY, groups=[("big", "large"), ("large", "huge")])
    with pytest.raises(ConfigurationError):
        Watermark(KEY, groups=[("alone",)])


# -- through the adapters -----------------------------------------------------------------------

ANSWER = PROSE


def _chat_doc() -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 60, "total_tokens": 65},
    }


def _events() -> list[bytes]:
    """SSE events of ANSWER, cut every 7 characters (inside words), then finish and [DONE]."""
    base = {"id": "c1", "object": "chat.completion.chunk"}
    out = []
    for i in range(0, len(ANSWER), 7):
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": {"content": ANSWER[i : i + 7]}, "finish_reason": None}],
        }
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    out.append(
        b"data: "
        + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
        + b"\n\n"
    )
    out.append(b"data: [DONE]\n\n")
    return out


def _answer(path: str) -> tuple[int, str, list[bytes]]:
    if path == "/v1/stream":
        return 200, "text/event-stream", _events()
    if path == "/v1/error":
        return 400, "application/json", [json.dumps({"error": {"message": ANSWER}}).encode()]
    body = json.dumps(_chat_doc()).encode()
    return 200, "application/json", [body[:50], body[50:]]


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body", False):
        pass
    status, kind, chunks = _answer(scope["path"])
    length = sum(map(len, chunks))
    headers = [(b"content-type", kind.encode()), (b"content-length", str(length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    status, kind, chunks = _answer(environ["PATH_INFO"])
    start_response(f"{status} X", [("Content-Type", kind), ("Content-Length", str(sum(map(len, chunks))))])
    return iter(chunks)


def call(
    kind: str, guard: Guard, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body or {"model": "m", "messages": [{"role": "user", "content": "rivers?"}]}).encode()
    token = make_token()
    if kind == "asgi":
        mw = DistillGuardMiddleware(asgi_app, guard=guard)
        return asyncio.run(asgi_call(mw, data, token=token, path=path))
    status, headers, payload = wsgi_call(
        DistillGuardWSGIMiddleware(wsgi_app, guard=guard), data, token=token, path=path
    )
    return status, headers, payload


def streamed_text(payload: bytes) -> str:
    text = ""
    for event in payload.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                text += choice.get("delta", {}).get("content") or ""
    return text


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_both_adapters_mark_chat_answers_json_and_streamed(kind: str) -> None:
    watermark = Watermark(KEY)
    guard = Guard(jwt=jwt_config(), watermark=watermark)
    status, headers, payload = call(kind, guard, "/v1/chat/completions")
    assert status == 200 and "content-length" not in headers
    doc = json.loads(payload)
    assert doc["choices"][0]["message"]["content"] == watermark.mark(ANSWER) != ANSWER
    assert doc["usage"] == _chat_doc()["usage"]
    status, headers, payload = call(
        kind,
        guard,
        "/v1/stream",
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 200 and payload.endswith(b"data: [DONE]\n\n")
    assert streamed_text(payload) == watermark.mark(ANSWER)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_what_is_not_marked_passes_byte_for_byte(kind: str) -> None:
    """Error answers, answers to other queries (vectors), shadow mode and guards without a
    watermark: the app's bytes and Content-Length, unchanged."""
    plain = json.dumps(_chat_doc()).encode()
    marked = Guard(jwt=jwt_config(), watermark=Watermark(KEY))
    status, headers, payload = call(kind, marked, "/v1/error")
    assert status == 400 and ANSWER in json.loads(payload)["error"]["message"] and "content-length" in headers
    status, _, payload = call(kind, marked, "/v1/predict", {"inputs": [[1.0, 2.0]]})
    assert payload == plain
    for guard in (
        Guard(jwt=jwt_config()),
        Guard(jwt=jwt_config(), watermark=Watermark(KEY), policy=Policy(shadow=True)),
    ):
        status, headers, payload = call(kind, guard, "/v1/chat/completions")
        assert payload == plain and headers["content-length"] == str(len(plain))


# -- settings and the command -------------------------------------------------------------------


def test_the_environment_sets_the_watermark_and_never_shows_its_key() -> None:
    from distillguard.settings import guard_from_env, settings_from_env

    env = {"DISTILLGUARD_WATERMARK_KEY": KEY.decode()}
    assert guard_from_env(env).watermark is not None
    assert guard_from_env({}).watermark is None
    assert KEY.decode() not in repr(settings_from_env(env))
    with pytest.raises(ConfigurationError):
        guard_from_env({"DISTILLGUARD_WATERMARK_KEY": "short"})


def test_the_command_finds_the_watermark_in_marked_outputs_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.detection.corpora import jailbreaks

    from distillguard.cli import main

    texts = list(jailbreaks("tuning"))[:200]
    watermark = Watermark(KEY)
    marked, plain, text_file = tmp_path / "marked.jsonl", tmp_path / "plain.jsonl", tmp_path / "one.txt"
    with marked.open("w") as out:
        for i, text in enumerate(texts):  # the shapes the command reads
            value: Any = [
                watermark.mark(text),
                {"text": watermark.mark(text)},
                {"choices": [{"message": {"content": watermark.mark(text)}}]},
            ][i % 3]
            out.write(json.dumps(value) + "\n")
    plain.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    text_file.write_text(watermark.mark(" ".join(texts)))
    monkeypatch.setenv("DISTILLGUARD_WATERMARK_KEY", KEY.decode())
    assert main(["watermark", "verify", str(marked)]) == 0
    assert "FOUND" in capsys.readouterr().out
    assert main(["watermark", "verify", str(text_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"] is True
    assert main(["watermark", "verify", str(plain), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["texts"] == 200 and report["found"] is False and report["trials"] > 100
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    assert main(["watermark", "verify", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    monkeypatch.delenv("DISTILLGUARD_WATERMARK_KEY")
    assert main(["watermark", "verify", str(marked)]) == 2
    assert "DISTILLGUARD_WATERMARK_KEY" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(40))
def test_any_event_stream_cut_anywhere_is_marked_as_its_whole_text(seed: int) -> None:
    """Chat or completion streams, one or two choices, any of the SSE line endings (``\\n``,
    ``\\r\\n``, ``\\r``), events of one or two lines, comments and keep-alives, with or without
    finish events, cut into pieces at random bytes: each choice's text comes out as ``mark`` of
    its whole text, every event stays an event, the non-data lines and ``[DONE]`` are
    unchanged."""
    from distillguard._marking import ResponseMarking

    rng = random.Random(seed)
    watermark = Watermark(KEY)
    eol = rng.choice([b"\n", b"\r\n", b"\r"])
    end = eol + eol
    named = rng.random() < 0.5  # an ``event:`` line before each data line
    chat = rng.random() < 0.5
    choices = rng.choice([1, 2])
    texts = {i: PROSE[rng.randrange(40) :] for i in range(choices)}
    cursor = dict.fromkeys(texts, 0)
    events: list[bytes] = []
    while any(cursor[i] < len(texts[i]) for i in texts):
        i = rng.choice([i for i in texts if cursor[i] < len(texts[i])])
        piece = texts[i][cursor[i] : cursor[i] + rng.randint(1, 9)]
        cursor[i] += len(piece)
        choice = {"index": i, "delta": {"content": piece}} if chat else {"index": i, "text": piece}
        data = b"data: " + json.dumps({"id": "x", "choices": [choice]}).encode()
        events.append(b"event: chunk" + eol + data if named else data)
        if rng.random() < 0.1:
            events.append(b": keep-alive")
    if rng.random() < 0.5:
        for i in texts:
            finish: dict[str, Any] = {"index": i, "finish_reason": "stop"}
            finish |= {"delta": {}} if chat else {"text": ""}
            events.append(b"data: " + json.dumps({"id": "x", "choices": [finish]}).encode())
    events.append(b"data: [DONE]")
    stream = b"".join(e + end for e in events)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 40)))
    marking = ResponseMarking(watermark)
    assert marking.start(200, "text/event-stream; charset=utf-8")
    out = b"".join(marking.feed(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True))
    out += marking.end()
    got: dict[int, str] = {}
    frames = out.split(end)
    assert frames[-1] == b"" and frames[-2] == b"data: [DONE]"
    assert frames.count(b": keep-alive") == events.count(b": keep-alive")
    named_events = sum(e.startswith(b"event: chunk" + eol) for e in events)
    assert sum(f.startswith(b"event: chunk" + eol + b"data: {") for f in frames) == named_events
    for frame in frames[:-2]:
        line = frame.split(eol)[-1]
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:])["choices"]:
                piece = choice["delta"].get("content", "") if chat else choice["text"]
                got[choice["index"]] = got.get(choice["index"], "") + piece
    assert got == {i: watermark.mark(t) for i, t in texts.items()}


@pytest.mark.parametrize("seed", range(12))
def test_a_compressed_event_stream_cut_anywhere_is_decoded_and_marked(seed: int) -> None:
    """A gzip answer (one member or several, as a server that compresses each flush sends it),
    cut at random bytes, comes out decoded and marked as its whole text; a damaged stream
    stops the decoding without raising."""
    import gzip

    from distillguard._marking import ResponseMarking

    rng = random.Random(seed)
    watermark = Watermark(KEY)
    text = PROSE[rng.randrange(40) :]
    events = [
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text[i : i + 7]}}]}).encode()
        for i in range(0, len(text), 7)
    ]
    plain = b"".join(e + b"\n\n" for e in [*events, b"data: [DONE]"])
    members = rng.randint(1, 4)
    bounds = sorted(rng.sample(range(1, len(plain)), members - 1))
    stream = b"".join(
        gzip.compress(plain[a:b]) for a, b in zip([0, *bounds], [*bounds, len(plain)], strict=True)
    )
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(0, 30)))
    marking = ResponseMarking(watermark)
    assert marking.start(200, "text/event-stream", "GZIP") and marking.decodes
    out = b"".join(marking.feed(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True))
    out += marking.end()
    assert out.endswith(b"data: [DONE]\n\n")
    got = "".join(
        json.loads(frame[6:])["choices"][0]["delta"]["content"]
        for frame in out.split(b"\n\n")
        if frame.startswith(b"data: {")
    )
    assert got == watermark.mark(text)
    damaged = ResponseMarking(watermark)
    assert damaged.start(200, "application/json", "gzip")
    assert damaged.feed(b"\x1f\x8b not really gzip") == b"" and isinstance(damaged.end(), bytes)


def test_an_unreadable_encoding_is_not_marked() -> None:
    """``br`` and ``zstd`` (not in the standard library) are not marked: they pass unchanged."""
    from distillguard._marking import ResponseMarking, readable

    assert readable("") and readable("identity") and readable(" Deflate ") and readable("x-gzip")
    assert not readable("br") and not readable("zstd") and not readable("gzip, br")
    assert not ResponseMarking(Watermark(KEY)).start(200, "application/json", "br")


def test_a_flush_event_never_repeats_the_usage() -> None:
    """A stream whose last chunk reports the usage and that has no finish event: the held word
    comes in an event of its own before ``[DONE]``, without the usage (counted once)."""
    from distillguard._marking import ResponseMarking

    chunks = [
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "it is often"}}]},
        {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}},
    ]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    marking = ResponseMarking(Watermark(KEY))
    assert marking.start(200, "text/event-stream")
    out = marking.feed(stream) + marking.end()
    frames = [json.loads(f[6:]) for f in out.split(b"\n\n") if f.startswith(b"data: {")]
    assert sum("usage" in frame for frame in frames) == 1
    text = "".join(c["delta"]["content"] for frame in frames for c in frame["choices"])
    assert text == Watermark(KEY).mark("it is often") and out.endswith(b"data: [DONE]\n\n")


def _cpu() -> float:
    import time

    return time.process_time()


def test_an_event_that_never_ends_passes_unchanged_in_linear_time() -> None:
    """A 4 MB stream with no blank line, in 4 KB chunks: once an event is longer than
    ``MAX_EVENT`` the marking stops, what it held goes out unchanged, the rest passes as it
    comes, and the whole takes well under a second of CPU (it was quadratic)."""
    from distillguard._marking import MAX_EVENT, ResponseMarking

    stream = b"data: " + b"x" * (4 * 1024 * 1024)
    marking = ResponseMarking(Watermark(KEY))
    assert marking.start(200, "text/event-stream")
    started = _cpu()
    outs = [marking.feed(stream[i : i + 4096]) for i in range(0, len(stream), 4096)]
    outs.append(marking.end())
    assert _cpu() - started < 1.0
    assert b"".join(outs) == stream and marking.overflowed
    sent = 0
    for n, out in enumerate(outs):  # nothing is held back past the cap
        sent += len(out)
        assert (n + 1) * 4096 - sent <= MAX_EVENT + 4096


def test_a_held_word_goes_out_before_an_overlong_event() -> None:
    """The word held back at the end of the last marked event is sent in an event of its own
    before the overlong event's bytes, which pass unchanged."""
    from distillguard._marking import MAX_EVENT, ResponseMarking

    watermark = Watermark(KEY)
    first = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"it is often"}}]}\n\n'
    huge = b": " + b"y" * (MAX_EVENT + 10)
    marking = ResponseMarking(watermark)
    assert marking.start(200, "text/event-stream")
    out = marking.feed(first) + marking.feed(huge) + marking.feed(b"\n\ndata: [DONE]\n\n") + marking.end()
    frames = out.split(b"\n\n")
    text = "".join(json.loads(f[6:])["choices"][0]["delta"]["content"] for f in frames[:2])
    assert text == watermark.mark("it is often")
    assert frames[2] == huge and frames[3] == b"data: [DONE]" and marking.overflowed


def test_an_overlong_json_answer_passes_unchanged() -> None:
    """A JSON answer longer than ``MAX_DOCUMENT`` is not held whole: it passes unchanged."""
    from distillguard._marking import MAX_DOCUMENT, ResponseMarking

    body = json.dumps(
        {"choices": [{"index": 0, "message": {"content": "it is often " * (MAX_DOCUMENT // 12 + 1)}}]}
    ).encode()
    marking = ResponseMarking(Watermark(KEY))
    assert marking.start(200, "application/json")
    out = b"".join(marking.feed(body[i : i + 65536]) for i in range(0, len(body), 65536)) + marking.end()
    assert out == body and marking.overflowed
    small = ResponseMarking(Watermark(KEY))
    assert small.start(200, "application/json")
    doc = {"choices": [{"index": 0, "message": {"content": "it is often"}}]}
    marked = json.loads(small.feed(json.dumps(doc).encode()) + small.end())
    assert not small.overflowed
    assert marked["choices"][0]["message"]["content"] == Watermark(KEY).mark("it is often")

"""The overhead benchmark keeps working and keeps other sections of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from benchmarks import _apps, overhead


def test_guarded_apps_answer_200_with_ratelimit_headers() -> None:
    """The benchmark's guarded request is admitted (so it measures the allowed path)."""
    body = _apps.chat_body()
    guard = _apps.make_guard(_apps.tracer_provider(), [_apps.TrivialDetector()])
    app = _apps.DistillGuardMiddleware(_apps.raw_asgi_app, guard=guard)
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    asyncio.run(app(_apps.asgi_scope(_apps.token(), body), receive, send))
    assert sent[0]["status"] == 200
    names = {name for name, _ in sent[0]["headers"]}  # type: ignore[attr-defined]
    assert {b"ratelimit", b"ratelimit-policy"} <= names
    assert 900 <= len(body) <= 1100


def test_quick_run_prints_every_stack(capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny run measures raw ASGI, Starlette, raw WSGI and Flask, bare and guarded."""
    overhead.main(["--requests", "30", "--repeats", "1", "--warmup", "5", "--quick"])
    out = capsys.readouterr().out
    for label in ("raw ASGI", "Starlette", "raw WSGI", "Flask"):
        assert f"| {label}, trivial detector |" in out
    assert "Command: `python -m benchmarks.overhead --requests 30" in out


def test_write_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    """Rewriting the generated block keeps the sections other people wrote."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nIntro.\n\n## Storage\n\nTheir figures.\n")
    overhead.write_section(doc, "first")
    overhead.write_section(doc, "second")
    text = doc.read_text()
    assert text.count(overhead.START) == 1
    assert "second" in text and "first" not in text
    assert text.index(overhead.START) < text.index("## Storage")
    assert "Their figures." in text and "Intro." in text


def test_scale_run_reports_bounded_tables(tmp_path: Path) -> None:
    """A small scale run (3,000 clients against a 2,000-key limit table) evicts instead of
    growing, and writes its report between its own markers."""
    from benchmarks import scale

    doc = tmp_path / "b.md"
    doc.write_text("before\n<!-- scale:start -->\nold\n<!-- scale:end -->\nafter\n")
    scale.main(["--clients", "3000", "--block", "1500", "--max-keys", "2000", "--write", str(doc)])
    text = doc.read_text()
    assert text.startswith("before\n<!-- scale:start -->\nCommand:") and text.endswith(
        "<!-- scale:end -->\nafter\n"
    )
    rows = [
        line.split(" | ")
        for line in text.splitlines()
        if line.startswith("| 1,500 |") or line.startswith("| 3,000 |")
    ]
    assert [r[3] for r in rows] == ["2,000", "2,000"]  # limit keys held: the cap
    # evicted: two windows for each client, and the warm-up client's two
    assert int(rows[-1][4].replace(",", "")) == 2 * 3000 + 2 - 2000

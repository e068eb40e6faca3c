"""Offline replay: the engine, the command, the JSON and HTML reports."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from distillguard.cli import main
from distillguard.replay import LogStats, ReplayEngine, build_report, offline_guard, read_log, render_html
from distillguard.replay.track import Series
from tests.replay.standins import WORDS, PrefixRepeat, chat, line, small_log

STANDIN = "tests.replay.standins:PrefixRepeat"


def _replay(path: Path, **kwargs: object) -> dict[str, object]:
    engine = ReplayEngine(offline_guard([PrefixRepeat()], None))
    with path.open(encoding="utf-8") as lines:
        result = engine.run(lines)
    return build_report(result)


def test_replay_catches_the_template_sweeper_and_not_the_benign_users(tmp_path: Path) -> None:
    """Only the template sweeper is flagged, at the request where its history first fills up."""
    log = tmp_path / "log.jsonl"
    small_log(log)
    report = _replay(log)
    clients = {c["client"]: c for c in report["clients"]}  # type: ignore[attr-defined]
    assert clients["attacker"]["flagged"] > 0
    assert clients["attacker"]["first_flag_request"] == 11
    assert clients["attacker"]["signals"] == {"prefix_repeat": 1.0}
    benign = [c for name, c in clients.items() if name != "attacker"]
    assert len(benign) == 6
    assert all(c["first_flag_request"] is None and c["flagged"] == 0 for c in benign)
    assert report["clients"][0]["client"] == "attacker"  # type: ignore[index]


def test_bad_lines_are_counted_and_never_fatal(tmp_path: Path) -> None:
    """Malformed, out-of-order and unknown-path lines are counted with their line numbers."""
    rows = [
        line(100.0, "a", chat("one two three four")),  # 1
        "{not json",  # 2
        line(90.0, "a", chat("late line here")),  # 3: out of order
        json.dumps({"ts": "x", "client": "a", "path": "/v1/completions", "body": {}}),  # 4
        line(110.0, "b", chat("hello"), path="/admin/reload"),  # 5: unknown path
        "",  # 6: blank, ignored
        json.dumps([1, 2]),  # 7
        json.dumps({"ts": 120.0, "client": "b", "path": "/v1/chat/completions"}),  # 8: no body
        line(130.0, "b", {"prompt": "plain completion"}, path="/v1/completions"),  # 9
    ]
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    stats = LogStats()
    records = list(read_log(log.read_text().splitlines(), stats))
    assert [r.line for r in records] == [1, 3, 9]
    assert records[1].clock == 100.0 and records[1].ts == 90.0  # the clock never goes back
    assert stats.malformed.as_dict() == {"count": 4, "first_lines": [2, 4, 7, 8]}
    assert stats.out_of_order.as_dict() == {"count": 1, "first_lines": [3]}
    assert stats.unknown_path.as_dict() == {"count": 1, "first_lines": [5]}

    out = tmp_path / "report.json"
    status = main(["replay", str(log), "--json", str(out), "--detectors", STANDIN, "--quiet"])
    assert status == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["lines"] == 9 and summary["replayed"] == 3
    assert summary["malformed"]["count"] == 4
    assert summary["out_of_order"]["first_lines"] == [3]
    assert summary["unknown_path"]["first_lines"] == [5]


def test_json_report_has_exactly_the_documented_schema(tmp_path: Path) -> None:
    """The command writes clients, campaigns and summary with exactly the documented keys."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=3, per_client=30)
    out = tmp_path / "report.json"
    assert main(["replay", str(log), "--json", str(out), "--detectors", STANDIN, "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"clients", "campaigns", "summary"}
    assert len(report["clients"]) == 4
    for entry in report["clients"]:
        assert set(entry) == {
            "client",
            "requests",
            "flagged",
            "first_flag_request",
            "first_flag_ts",
            "max_risk",
            "signals",
            "online",
        }
        assert entry["online"] is None  # the log records no online decision
        assert isinstance(entry["client"], str) and isinstance(entry["requests"], int)
        assert entry["first_flag_request"] is None or entry["first_flag_request"] >= 1
        assert (entry["first_flag_ts"] is None) == (entry["first_flag_request"] is None)
        assert 0.0 <= entry["max_risk"] <= 1.0
        assert set(entry["signals"]) == {"prefix_repeat"}
    assert isinstance(report["campaigns"], list)
    assert {"lines", "replayed", "clients", "flagged_clients", "malformed", "out_of_order"} <= set(
        report["summary"]
    )
    assert report["summary"]["detectors"] == ["prefix_repeat"]


def test_html_report_has_one_risk_plot_per_flagged_client(tmp_path: Path) -> None:
    """The HTML page is self-contained and holds an SVG plot for each flagged client."""
    rows: list[str] = []
    for k in range(3):
        for i in range(40):
            rows.append(line(1000.0 + 10 * i + k, f"sweeper-{k}", chat(f"Explain step by step item {i} {k}")))
    rng = random.Random(3)
    for i in range(40):
        rows.append(line(1000.0 + 10 * i + 5, "reader", chat(" ".join(rng.sample(WORDS, 5)))))
    rows.sort(key=lambda r: json.loads(r)["ts"])
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(rows) + "\n", encoding="utf-8")
    html_path = tmp_path / "report.html"
    json_path = tmp_path / "report.json"
    argv = ["replay", str(log), "--html", str(html_path), "--json", str(json_path), "--detectors", STANDIN]
    assert main([*argv, "--quiet"]) == 0
    page = html_path.read_text()
    flagged = [c["client"] for c in json.loads(json_path.read_text())["clients"] if c["flagged"]]
    assert sorted(flagged) == ["sweeper-0", "sweeper-1", "sweeper-2"]
    assert page.count('<svg class="risk"') == 3
    for name in flagged:
        assert f'aria-label="risk of {name}"' in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    # the three sweepers share a template family and a cadence: one campaign
    campaigns = json.loads(json_path.read_text())["campaigns"]
    assert [c["clients"] for c in campaigns] == [["sweeper-0", "sweeper-1", "sweeper-2"]]


def test_progress_is_reported_with_a_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Long logs print progress lines with a rate on stderr."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=2, per_client=50)
    argv = ["replay", str(log), "--detectors", STANDIN, "--progress-every", "40"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert len(re.findall(r"^replay: [\d,]+ lines \([\d,]+ lines/s\)", err, re.M)) == 3
    assert "1 flagged" in err.splitlines()[-1] or "1 flagged" in err


def test_series_keeps_peaks_within_its_cap() -> None:
    """The risk series stays bounded and keeps the highest value of merged points."""
    series = Series(cap=16)
    for i in range(1000):
        series.add(float(i), 1.0 if i == 613 else 0.1)
    points = series.points()
    assert len(points) <= 16
    assert max(v for _, v in points) == 1.0
    assert points[-1][0] >= 990.0
    assert [t for t, _ in points] == sorted(t for t, _ in points)


def test_html_renders_without_flagged_clients(tmp_path: Path) -> None:
    """A log with no suspicious client still renders, saying so."""
    log = tmp_path / "log.jsonl"
    log.write_text(line(1.0, "solo", chat("just one question")) + "\n")
    engine = ReplayEngine(offline_guard([PrefixRepeat()], None))
    result = engine.run(log.read_text().splitlines())
    page = render_html(result)
    assert "No client was flagged" in page and "<svg" not in page


def test_default_detectors_catch_a_sweeper_and_a_prober_among_chat_users(tmp_path: Path) -> None:
    """With the built-in default detectors, the command flags a template sweeper and a logprob
    prober early and none of a dozen conversational users."""
    from benchmarks.detection.attacks import attack_stream
    from benchmarks.detection.benign import chat_user
    from benchmarks.detection.scenarios import tuning_corpus
    from benchmarks.detection.streams import write_log

    rng = random.Random(11)
    corpus = tuning_corpus()
    streams = [chat_user(f"user-{i}", corpus, rng, days=2) for i in range(12)]
    streams.append(attack_stream("sweeper", "template", corpus, rng, queries=150, days=2))
    log = tmp_path / "log.jsonl"
    write_log(streams, log)
    start = streams[-1].events[0][0]
    with log.open("a", encoding="utf-8") as out:  # Carlini et al.: top-5 logprobs, rotating biased ids
        for i in range(40):
            bias = {str(5000 + 5 * i + k): 100 for k in range(5)}
            body = chat("What is the capital of France?", max_tokens=1, logprobs=True, top_logprobs=5)
            out.write(line(start + 2.0 * i, "prober", {**body, "logit_bias": bias}) + "\n")
    rows = sorted(log.read_text().splitlines(), key=lambda r: json.loads(r)["ts"])
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report.json"
    assert main(["replay", str(log), "--json", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    clients = {c["client"]: c for c in report["clients"]}
    assert clients["sweeper"]["first_flag_request"] is not None
    assert clients["sweeper"]["first_flag_request"] <= 100
    assert clients["prober"]["first_flag_request"] is not None
    assert clients["prober"]["first_flag_request"] <= 20
    assert [name for name, c in clients.items() if c["flagged"] and name.startswith("user-")] == []
    assert set(report["summary"]["detectors"]) >= {"template_sweep", "parameter_probe", "coverage"}


def test_parallel_replay_gives_the_same_report(tmp_path: Path) -> None:
    """--jobs 2 shards clients over two processes and, with per-client detectors, reports exactly
    what one process does."""
    from benchmarks.detection.attacks import attack_stream
    from benchmarks.detection.benign import chat_user
    from benchmarks.detection.scenarios import tuning_corpus
    from benchmarks.detection.streams import write_log

    rng = random.Random(5)
    corpus = tuning_corpus()
    streams = [chat_user(f"user-{i}", corpus, rng, days=1) for i in range(6)]
    streams += [attack_stream(f"sweeper-{i}", "template", corpus, rng, queries=80, days=1) for i in range(3)]
    log = tmp_path / "log.jsonl"
    write_log(streams, log)
    with log.open("a") as out:
        out.write("{broken\n")
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    names = "near_duplicate,template_sweep,parameter_probe,volume_timing"
    assert main(["replay", str(log), "--json", str(one), "--quiet", "--detectors", names]) == 0
    assert main(["replay", str(log), "--json", str(two), "--quiet", "--detectors", names, "--jobs", "2"]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["clients"] == b["clients"]
    assert a["campaigns"] == b["campaigns"]
    assert sum(1 for c in a["clients"] if c["flagged"]) >= 3
    for key in (
        "lines",
        "replayed",
        "clients",
        "malformed",
        "detectors",
        "client_days",
        "flagged_client_days",
    ):
        assert a["summary"][key] == b["summary"][key]
    assert b["summary"]["malformed"]["count"] == 1


def test_several_logs_are_replayed_as_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The files of several workers (one gzip-compressed) replay, in one process or two, and
    calibrate exactly as their concatenation; a missing file or standard input among files
    stops the command (status 2) before anything is read."""
    import gzip

    log = tmp_path / "all.jsonl"
    lines = small_log(log)
    half = len(lines) // 2
    first, second = tmp_path / "w1.jsonl", tmp_path / "w2.jsonl.gz"
    first.write_text("\n".join(lines[:half]) + "\n")
    second.write_bytes(gzip.compress(("\n".join(lines[half:]) + "\n").encode()))
    whole, parts, sharded = tmp_path / "whole.json", tmp_path / "parts.json", tmp_path / "sharded.json"
    common = ["--quiet", "--detectors", STANDIN]
    assert main(["replay", str(log), "--json", str(whole), *common]) == 0
    assert main(["replay", str(first), str(second), "--json", str(parts), *common]) == 0
    assert main(["replay", str(first), str(second), "--json", str(sharded), *common, "--jobs", "2"]) == 0
    a, b, c = (json.loads(p.read_text()) for p in (whole, parts, sharded))
    assert a["clients"] == b["clients"] == c["clients"] and any(e["flagged"] for e in a["clients"])
    assert a["summary"]["lines"] == b["summary"]["lines"] == len(lines)
    one, two = tmp_path / "t1.json", tmp_path / "t2.json"
    assert main(["calibrate", str(log), "--out", str(one), *common]) == 0
    assert main(["calibrate", str(first), str(second), "--out", str(two), *common]) == 0
    assert json.loads(one.read_text())["thresholds"] == json.loads(two.read_text())["thresholds"]
    capsys.readouterr()
    assert main(["replay", str(first), str(tmp_path / "missing.jsonl"), "--json", str(parts), *common]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["replay", str(first), "-", "--json", str(parts), *common]) == 2
    assert "standard input" in capsys.readouterr().err

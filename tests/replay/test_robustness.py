"""Offline commands on hostile or unusual input: nothing in a log, a file or an argument ends
in a traceback, and nothing is skipped without being counted."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

import distillguard.flow
import distillguard.replay.engine
from distillguard.cli import main
from distillguard.detectors import DetectorResult, Observation
from distillguard.errors import ConfigurationError
from distillguard.replay import LogStats, ReplayEngine, Thresholds, build_report, offline_guard, read_log
from distillguard.replay.log import Oversized, read_lines
from distillguard.replay.report import write_json
from tests.replay.standins import PrefixRepeat, chat, line, small_log

STANDIN = "tests.replay.standins:PrefixRepeat"
FIELD = "tests.replay.standins:FieldScore"
REMOVER = "tests.replay.test_robustness:DirectoryRemover"
T0 = 1_767_225_600.0


def _report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _sweeper_rows(client: str = "attacker", n: int = 30, start: float = T0) -> list[dict[str, Any]]:
    return [
        {
            "ts": start + 30.0 * i,
            "client": client,
            "path": "/v1/chat/completions",
            "body": chat(f"Explain step by step item {i}"),
        }
        for i in range(n)
    ]


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# -- the engine --------------------------------------------------------------------------------


def test_a_query_that_cannot_be_parsed_after_a_guard_failure_does_not_end_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the guard fails (the query parser raising, here) the engine parses the body again for
    the report; a failure there too is counted, and the replay goes on."""

    def broken(body: bytes, content_type: str = "application/json", path: str = "") -> Any:
        raise RuntimeError("parser failure")

    monkeypatch.setattr(distillguard.flow, "parse_query", broken)
    monkeypatch.setattr(distillguard.replay.engine, "parse_query", broken)
    log = _write(tmp_path / "log.jsonl", [line(T0 + i, f"c{i % 2}", chat("hello there")) for i in range(4)])
    engine = ReplayEngine(offline_guard([PrefixRepeat()], None))
    result = engine.run(log.read_text().splitlines())
    assert result.stats.replayed == 4
    assert {t.client: t.requests for t in result.tracks.values()} == {"c0": 2, "c1": 2}
    assert result.errors == {"guard:RuntimeError": 4, "replay:RuntimeError": 4}
    assert build_report(result)["summary"]["errors"] == {"guard:RuntimeError": 4, "replay:RuntimeError": 4}


def test_a_body_with_a_huge_integer_is_replayed(tmp_path: Path) -> None:
    """A number of hundreds of digits (valid JSON) in a body is replayed, not fatal."""
    huge = "1" + "0" * 400
    body = {"model": "m", "temperature": "HUGE", "max_tokens": "HUGE", "logit_bias": {"1": "HUGE"}}
    rows = [
        line(T0, "a", chat("hello there")),
        line(T0 + 1, "a", chat("hi", **body)).replace('"HUGE"', huge),
    ]
    log = _write(tmp_path / "log.jsonl", rows)
    out = tmp_path / "r.json"
    assert main(["replay", str(log), "--json", str(out), "--quiet"]) == 0
    assert _report(out)["summary"]["replayed"] == 2


def test_progress_counts_every_line_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A long run of unusable lines still shows progress."""
    rows = ["{broken"] * 50 + [line(T0 + 5, "x", chat("one")), line(T0 + 6, "y", chat("two"), path="/health")]
    rows += ["[1, 2]"] * 48
    log = _write(tmp_path / "log.jsonl", rows)
    assert main(["replay", str(log), "--detectors", STANDIN, "--progress-every", "10"]) == 0
    err = capsys.readouterr().err
    reported = [int(n.replace(",", "")) for n in _progress_counts(err, "replay")]
    assert reported == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert "1 requests from 1 clients" in err and "98 malformed" in err and "1 unknown paths" in err


def _progress_counts(err: str, word: str) -> list[str]:
    import re

    return re.findall(rf"^{word}: ([\d,]+) lines", err, re.M)


# -- reading the log -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    ["1" + "0" * 400, "-1" + "0" * 400, "1e400", "NaN", "Infinity", '"1767225600"', "true", "null"],
)
def test_unusable_timestamps_are_malformed_lines(ts: str) -> None:
    """A timestamp that is not a finite number of seconds (an integer too large for a float
    included) makes the line malformed."""
    text = line(T0, "c", {}).replace(str(T0), ts)
    stats = LogStats()
    assert list(read_log([text, line(T0, "c", chat("fine"))], stats)) != []
    assert stats.malformed.as_dict() == {"count": 1, "first_lines": [1]}
    assert stats.replayed == 1


def test_a_client_name_that_is_not_valid_unicode_is_malformed(tmp_path: Path) -> None:
    """A lone surrogate (a JSON escape) in the client cannot be written in a report: the line is
    malformed, and the reports are written whole."""
    rows = [
        line(T0, "ab-cd", {}).replace("ab-cd", "ab\\ud800cd"),
        line(T0 + 1, "fine", chat("hello")),
    ]
    log = _write(tmp_path / "log.jsonl", rows)
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    assert (
        main(["replay", str(log), "--json", str(out), "--html", str(page), "--detectors", STANDIN, "--quiet"])
        == 0
    )
    report = _report(out)
    assert [c["client"] for c in report["clients"]] == ["fine"]
    assert report["summary"]["malformed"]["first_lines"] == [1]
    assert "fine" in page.read_text(encoding="utf-8")


def test_reports_with_invalid_unicode_are_still_written_whole(tmp_path: Path) -> None:
    """A report holding a lone surrogate (built from Python, not from a log) is written as its
    JSON escape, readable back, with no temporary file left behind."""
    out = tmp_path / "r.json"
    out.write_text('{"previous": true}\n', encoding="utf-8")
    write_json({"clients": [{"client": "ab\ud800cd"}]}, out)
    assert json.loads(out.read_bytes()) == {"clients": [{"client": "ab\ud800cd"}]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_body_logged_as_a_string_is_replayed_as_its_json(tmp_path: Path) -> None:
    """The request's JSON text logged as a string replays like the object; a string that is not
    a JSON object or array is replayed as a raw body and counted as an unparsed body."""
    as_objects = [json.dumps(r) for r in _sweeper_rows()]
    as_strings = [json.dumps({**r, "body": json.dumps(r["body"])}) for r in _sweeper_rows()]
    one = _write(tmp_path / "objects.jsonl", as_objects)
    two = _write(tmp_path / "strings.jsonl", as_strings)
    extra = [
        line(T0 + 2000, "raw", "just some text"),
        line(T0 + 2001, "raw", "{not json"),
        line(T0 + 2002, "raw", "42"),
    ]
    with two.open("a", encoding="utf-8") as out:
        out.write("\n".join(extra) + "\n")
    r1, r2 = tmp_path / "1.json", tmp_path / "2.json"
    assert main(["replay", str(one), "--json", str(r1), "--detectors", STANDIN, "--quiet"]) == 0
    assert main(["replay", str(two), "--json", str(r2), "--detectors", STANDIN, "--quiet"]) == 0
    a, b = _report(r1), _report(r2)
    attacker = next(c for c in b["clients"] if c["client"] == "attacker")
    assert attacker == a["clients"][0]
    assert attacker["first_flag_request"] == 11
    assert b["summary"]["unparsed_bodies"] == {"count": 3, "first_lines": [31, 32, 33]}
    assert a["summary"]["unparsed_bodies"]["count"] == 0
    assert b["summary"]["malformed"]["count"] == 0


def test_byte_order_mark_crlf_and_raw_carriage_returns(tmp_path: Path) -> None:
    """A leading byte-order mark is ignored, CRLF line ends work, and a raw carriage return
    inside a line (JSON whitespace) does not split it."""
    rows = [line(T0 + i, f"c{i}", chat("hello there")) for i in range(3)]
    rows[1] = rows[1].replace(', "path"', ',\r"path"')
    data = b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n"
    log = tmp_path / "log.jsonl"
    log.write_bytes(data)
    out = tmp_path / "r.json"
    assert main(["replay", str(log), "--json", str(out), "--detectors", STANDIN, "--quiet"]) == 0
    summary = _report(out)["summary"]
    assert summary["lines"] == 3 and summary["replayed"] == 3
    assert summary["malformed"]["count"] == 0
    assert sorted(c["client"] for c in _report(out)["clients"]) == ["c0", "c1", "c2"]


def test_standard_input_reads_like_a_file_whatever_the_locale(tmp_path: Path) -> None:
    """Standard input is UTF-8 (with a byte-order mark, CRLF, gzip) regardless of the locale's
    encoding, and gives the same report as the file."""
    rows = [line(T0 + i, "josé-ü", chat(f"question número {i}")) for i in range(3)]
    data = b"\xef\xbb\xbf" + "\r\n".join(rows).encode("utf-8") + b"\r\n"
    log = tmp_path / "log.jsonl"
    log.write_bytes(data)
    from_file = tmp_path / "file.json"
    assert main(["replay", str(log), "--json", str(from_file), "--detectors", STANDIN, "--quiet"]) == 0
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", "LC_ALL": "C", "LANG": "C"}
    for name, payload in (("plain", data), ("gzip", gzip.compress(data))):
        out = tmp_path / f"stdin-{name}.json"
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from distillguard.cli import main; sys.exit(main())",
                "replay",
                "-",
                "--json",
                str(out),
                "--detectors",
                STANDIN,
                "--quiet",
            ],
            input=payload,
            capture_output=True,
            env=env,
            cwd=Path(__file__).parents[2],
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        report = _report(out)
        assert [c["client"] for c in report["clients"]] == ["josé-ü"]
        assert report["clients"] == _report(from_file)["clients"]
        assert report["summary"]["malformed"]["count"] == 0


def test_gzip_logs_replay_and_calibrate_like_plain_ones(tmp_path: Path) -> None:
    """A .jsonl.gz log (recognised by its magic bytes) gives the same report, with one process
    or two, and the same thresholds."""
    plain = tmp_path / "log.jsonl"
    small_log(plain, benign=3, per_client=30)
    packed = tmp_path / "log.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    reports = {}
    for name, path, jobs in (("plain", plain, "1"), ("gzip", packed, "1"), ("gzip2", packed, "2")):
        out = tmp_path / f"{name}.json"
        argv = ["replay", str(path), "--json", str(out), "--detectors", STANDIN, "--quiet", "--jobs", jobs]
        assert main(argv) == 0
        reports[name] = _report(out)
    assert reports["plain"]["summary"]["replayed"] == 120
    assert any(c["flagged"] for c in reports["plain"]["clients"])
    assert reports["gzip"]["clients"] == reports["plain"]["clients"]
    assert reports["gzip2"]["clients"] == reports["plain"]["clients"]
    thresholds = []
    for path in (plain, packed):
        out = tmp_path / f"t-{path.suffix}.json"
        argv = [
            "calibrate",
            str(path),
            "--out",
            str(out),
            "--detectors",
            STANDIN,
            "--quiet",
            "--floor",
            "0.01",
        ]
        assert main(argv) == 0
        thresholds.append(_report(out))
    assert thresholds[0] == thresholds[1]
    assert thresholds[0]["clients"] == 4


def test_a_damaged_gzip_log_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated gzip log ends the command with status 2 and a message."""
    plain = tmp_path / "log.jsonl"
    small_log(plain, benign=3, per_client=30)
    packed = gzip.compress(plain.read_bytes())
    log = tmp_path / "log.jsonl.gz"
    log.write_bytes(packed[: len(packed) // 2])
    assert main(["replay", str(log), "--detectors", STANDIN, "--quiet"]) == 2
    assert "corrupt compressed input" in capsys.readouterr().err


def test_oversized_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    """A line longer than --max-line-bytes is counted as oversized, not parsed, and the next line
    is read intact."""
    big = line(T0 + 1, "big", chat("x " * 5000))
    rows = [line(T0, "a", chat("small one")), big, line(T0 + 2, "b", chat("small two"))]
    log = _write(tmp_path / "log.jsonl", rows)
    out = tmp_path / "r.json"
    argv = [
        "replay",
        str(log),
        "--json",
        str(out),
        "--detectors",
        STANDIN,
        "--quiet",
        "--max-line-bytes",
        "1000",
    ]
    assert main(argv) == 0
    report = _report(out)
    assert report["summary"]["oversized"] == {"count": 1, "first_lines": [2]}
    assert sorted(c["client"] for c in report["clients"]) == ["a", "b"]
    assert report["summary"]["malformed"]["count"] == 0
    # the reader hands over no more than the cap of a long line
    with log.open("rb") as stream:
        lines = list(read_lines(stream, max_line_bytes=1000))
    assert lines[1] == Oversized(len(big.encode()))
    assert lines[0] == rows[0] and lines[2] == rows[2]
    # text lines given directly are held to the same cap
    stats = LogStats()
    assert [r.client for r in read_log(rows, stats, max_line_bytes=1000)] == ["a", "b"]
    assert stats.oversized.count == 1


# -- timestamps in the HTML report ---------------------------------------------------------------


def test_html_shows_timestamps_out_of_the_calendar_and_warns_about_milliseconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Millisecond or far negative timestamps do not break the HTML report: they are shown as
    numbers, and one warning says the log looks like milliseconds."""
    rows = [json.dumps({**r, "ts": r["ts"] * 1000}) for r in _sweeper_rows()]
    rows.append(line(-1e12, "ancient", chat("hello")))
    log = _write(tmp_path / "log.jsonl", rows)
    page = tmp_path / "r.html"
    assert main(["replay", str(log), "--html", str(page), "--detectors", STANDIN, "--quiet"]) == 0
    html = page.read_text(encoding="utf-8")
    assert "ts 1767225600000.0" in html and "ts -1000000000000.0" in html
    assert '<svg class="risk"' in html
    err = capsys.readouterr().err
    assert err.count("timestamps look like milliseconds") == 1


# -- outputs -------------------------------------------------------------------------------------


def test_outputs_are_checked_before_the_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output in a missing directory, or that is a directory, stops the command before it
    reads the log: status 2 and one line on stderr."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=1, per_client=20)
    cases = [
        ["replay", str(log), "--json", str(tmp_path / "missing" / "r.json")],
        ["replay", str(log), "--json", str(tmp_path / "ok.json"), "--html", str(tmp_path)],
        ["calibrate", str(log), "--out", str(tmp_path / "missing" / "t.json")],
    ]
    for argv in cases:
        assert main([*argv, "--detectors", STANDIN, "--progress-every", "1"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "cannot write" in err
        assert "lines" not in err  # no progress: the log was not read
    assert not (tmp_path / "ok.json").exists()


class DirectoryRemover:
    """Removes :attr:`target` when it first scores: an output directory that disappears while
    a replay runs."""

    name = "directory_remover"
    target: ClassVar[Path | None] = None

    def score(self, observation: Observation) -> DetectorResult:
        target = DirectoryRemover.target
        if target is not None and target.exists():
            shutil.rmtree(target)
        return DetectorResult(self.name, 0.0)


def test_a_write_failure_after_the_replay_is_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When an output cannot be written after all, the command says so and exits with status 2."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=1, per_client=5)
    gone = tmp_path / "gone"
    gone.mkdir()
    DirectoryRemover.target = gone
    try:
        status = main(["replay", str(log), "--json", str(gone / "r.json"), "--detectors", REMOVER, "--quiet"])
    finally:
        DirectoryRemover.target = None
    assert status == 2
    err = capsys.readouterr().err
    assert f"cannot write {gone / 'r.json'}" in err and "Traceback" not in err


# -- arguments and thresholds files --------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "LOG", "--out", "OUT", "--window-seconds", "nan"],
        ["calibrate", "LOG", "--out", "OUT", "--window-seconds", "1e-320"],
        ["calibrate", "LOG", "--out", "OUT", "--window-seconds", "inf"],
        ["calibrate", "LOG", "--out", "OUT", "--window-seconds", "0.5"],
        ["replay", "LOG", "--top", "-1"],
        ["replay", "LOG", "--max-line-bytes", "0"],
        ["replay", "LOG", "--progress-every", "-5"],
    ],
)
def test_bad_arguments_are_usage_errors(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Values that would fail later (or silently drop a client) are refused by the parser."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=1, per_client=5)
    argv = [str(log) if a == "LOG" else str(tmp_path / "t.json") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_top_zero_lists_no_client(tmp_path: Path) -> None:
    """--top 0 is allowed: the table is empty, the summary still counts every client."""
    log = tmp_path / "log.jsonl"
    small_log(log, benign=2, per_client=20)
    page = tmp_path / "r.html"
    assert (
        main(["replay", str(log), "--html", str(page), "--detectors", STANDIN, "--quiet", "--top", "0"]) == 0
    )
    assert "<h2>Top 0 clients</h2>" in page.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"thresholds": {"prada": "high"}}, "thresholds.prada"),
        ({"thresholds": {"prada": None}}, "thresholds.prada"),
        ({"thresholds": {"prada": True}}, "thresholds.prada"),
        ({"thresholds": {"prada": 1.5}}, "thresholds.prada"),
        ({"thresholds": None}, "'thresholds'"),
        ({"thresholds": {"prada": 0.6}, "samples": [1]}, "'samples'"),
        ({"thresholds": {"prada": 0.6}, "samples": {"prada": "many"}}, "samples.prada"),
        ({"thresholds": {"prada": 0.6}, "percentile": "high"}, "'percentile'"),
        ({"thresholds": {"prada": 0.6}, "floor": None}, "'floor'"),
        ({"thresholds": {"prada": 0.6}, "clients": -3}, "'clients'"),
    ],
)
def test_malformed_thresholds_files_name_the_field(
    tmp_path: Path, content: dict[str, Any], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A thresholds file with a bad value is a configuration error naming the field, and the
    command exits with status 2 and that message."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "distillguard-thresholds/1", **content}))
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        Thresholds.load(path)
    log = _write(tmp_path / "log.jsonl", [line(T0, "a", chat("hello"))])
    assert main(["replay", str(log), "--config", str(path), "--detectors", STANDIN, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert field in err and len(err.splitlines()) == 1


def test_thresholds_for_absent_detectors_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thresholds naming detectors not in the run (a plugin not installed) are used anyway, with
    a warning naming them."""
    path = tmp_path / "t.json"
    Thresholds(detectors={"prefix_repeat": 0.6, "nosuch": 0.7, "other": 0.8}).save(path)
    log = _write(tmp_path / "log.jsonl", [line(T0, "a", chat("hello"))])
    assert main(["replay", str(log), "--config", str(path), "--detectors", STANDIN, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "detectors not in this run: nosuch, other" in err


# -- calibrate reports like replay ---------------------------------------------------------------


def test_calibrate_reports_progress_and_the_skipped_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibrate prints progress every --progress-every lines and the same counts as replay."""
    rows = [
        line(T0 + 60.0 * i, f"c{i % 3}", {"prompt": "hello there", "s": 0.2}, path="/v1/completions")
        for i in range(30)
    ]
    rows[4] = "{broken"
    rows[7] = line(T0, "c0", {"prompt": "late", "s": 0.1}, path="/v1/completions")  # out of order
    rows[9] = line(T0 + 600, "c0", {"prompt": "x"}, path="/health")
    log = _write(tmp_path / "benign.jsonl", rows)
    out = tmp_path / "t.json"
    argv = ["calibrate", str(log), "--out", str(out), "--detectors", FIELD, "--progress-every", "10"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert _progress_counts(err, "calibrate") == ["10", "20", "30"]
    assert "28 requests from 3 clients; 1 malformed, 1 out of order, 1 unknown paths" in err
    assert "field_score: " in err

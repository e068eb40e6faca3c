"""Calibration: thresholds are percentiles of the per-client-day benign null."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard.cli import main
from distillguard.errors import ConfigurationError
from distillguard.replay import Thresholds, percentile
from tests.replay.standins import line

DAY = 86_400.0
STANDIN = "tests.replay.standins:FieldScore"

# (client, day, score): per client-day maxima are 0.3, 0.2, 0.9, 0.4, 0.6, 0.7
ROWS = [
    ("c0", 0, 0.1),
    ("c0", 0, 0.3),
    ("c0", 1, 0.2),
    ("c1", 0, 0.9),
    ("c1", 0, 0.5),
    ("c1", 1, 0.4),
    ("c2", 0, 0.6),
    ("c3", 1, 0.0),
    ("c3", 1, 0.7),
]


def _benign_log(path: Path) -> None:
    rows = [
        line(
            20 * DAY + day * DAY + 60.0 * i, client, {"prompt": "hello there", "s": s}, path="/v1/completions"
        )
        for i, (client, day, s) in enumerate(ROWS)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_percentile_interpolates_linearly() -> None:
    """The percentile matches numpy's default linear interpolation on a hand example."""
    values = [0.3, 0.2, 0.9, 0.4, 0.6, 0.7]
    assert percentile(values, 50) == pytest.approx(0.5)  # rank 2.5 between 0.4 and 0.6
    assert percentile(values, 90) == pytest.approx(0.8)  # rank 4.5 between 0.7 and 0.9
    assert percentile(values, 100) == pytest.approx(0.9)
    assert percentile(values, 0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        percentile([], 50)


@pytest.mark.parametrize(("p", "expected"), [(90.0, 0.8), (50.0, 0.5), (99.9, 0.8990)])
def test_calibrate_writes_percentiles_of_the_client_day_maxima(
    tmp_path: Path, p: float, expected: float
) -> None:
    """The command's thresholds equal a hand computation over per-client-day maxima."""
    log = tmp_path / "benign.jsonl"
    _benign_log(log)
    out = tmp_path / "thresholds.json"
    argv = ["calibrate", str(log), "--out", str(out), "--percentile", str(p), "--floor", "0.01"]
    assert main([*argv, "--detectors", STANDIN, "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["thresholds"]["field_score"] == pytest.approx(expected, abs=1e-6)
    assert data["samples"] == {"field_score": 6}
    assert data["clients"] == 4 and data["percentile"] == p


def test_detector_errors_are_counted_in_the_file_and_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A detector that fails scores 0 for that request, which lowers its null: the file and
    the command's output say how often it happened."""
    log = tmp_path / "benign.jsonl"
    _benign_log(log)
    failing = [
        line(30 * DAY + i, "c9", {"prompt": "hi", "s": "raise"}, path="/v1/completions") for i in range(3)
    ]
    log.write_text(log.read_text() + "\n".join(failing) + "\n", encoding="utf-8")
    out = tmp_path / "thresholds.json"
    argv = ["calibrate", str(log), "--out", str(out), "--floor", "0.01", "--detectors", STANDIN]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["errors"] == {"detector:field_score": 3}
    assert Thresholds.load(out).errors == {"detector:field_score": 3}
    assert "warning: internal errors while replaying: detector:field_score 3" in capsys.readouterr().err


def test_floor_and_window_are_applied(tmp_path: Path) -> None:
    """A low percentile is raised to the floor; a longer window pools a client's days."""
    log = tmp_path / "benign.jsonl"
    _benign_log(log)
    out = tmp_path / "t.json"
    base = ["calibrate", str(log), "--out", str(out), "--detectors", STANDIN, "--quiet"]
    assert main([*base, "--percentile", "10", "--floor", "0.3"]) == 0
    assert json.loads(out.read_text())["thresholds"]["field_score"] == pytest.approx(0.3)
    # two-day windows: maxima per client are 0.3, 0.9, 0.6, 0.7 -> p50 = 0.65
    assert main([*base, "--percentile", "50", "--floor", "0.01", "--window-seconds", str(2 * DAY)]) == 0
    assert json.loads(out.read_text())["thresholds"]["field_score"] == pytest.approx(0.65)


def test_replay_reads_the_thresholds_file(tmp_path: Path) -> None:
    """With --config, a score at the calibrated threshold reaches the flag level, below it does not."""
    thresholds = tmp_path / "t.json"
    Thresholds(detectors={"field_score": 0.8}, floor=0.01).save(thresholds)
    assert Thresholds.load(thresholds).risk_policy().thresholds == {"field_score": 0.8}
    log = tmp_path / "log.jsonl"
    rows = [
        line(1.0, "at", {"prompt": "x y", "s": 0.8}, path="/v1/completions"),
        line(2.0, "below", {"prompt": "x y", "s": 0.7}, path="/v1/completions"),
    ]
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    argv = ["replay", str(log), "--json", str(out), "--config", str(thresholds), "--detectors", STANDIN]
    assert main([*argv, "--quiet"]) == 0
    clients = {c["client"]: c for c in json.loads(out.read_text())["clients"]}
    assert clients["at"]["max_risk"] == pytest.approx(0.5) and clients["at"]["flagged"] == 1
    assert clients["below"]["max_risk"] == pytest.approx(0.5 * 0.7 / 0.8) and clients["below"]["flagged"] == 0


def test_bad_thresholds_files_fail_fast(tmp_path: Path) -> None:
    """A file that is not a thresholds file is a configuration error."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"thresholds": {"a": 0.5}}))
    with pytest.raises(ConfigurationError):
        Thresholds.load(bad)
    with pytest.raises(ConfigurationError):
        Thresholds(detectors={"a": 1.0})
    log = tmp_path / "log.jsonl"
    log.write_text(line(1.0, "a", {"prompt": "p q"}, path="/v1/completions") + "\n")
    assert main(["replay", str(log), "--config", str(bad), "--detectors", STANDIN, "--quiet"]) == 2

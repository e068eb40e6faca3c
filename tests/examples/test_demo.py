"""``distillguard demo``: the end-to-end contract (extractor caught, benign users served, exit status)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillguard.cli import main
from distillguard.cli._demo_traffic import BENIGN_USERS, EXTRACTOR, schedule
from distillguard.settings import registered_detectors


@pytest.mark.slow
def test_demo_catches_the_extractor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With the registered detectors the extractor is caught, no benign user is refused, exit 0."""
    out = tmp_path / "summary.json"
    assert main(["demo", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["detectors"] == list(registered_detectors())
    assert summary["passed"] is True
    assert summary["attacker_caught"] is True
    assert summary["benign_blocked"] == []
    clients = {c["client"]: c for c in summary["clients"]}
    assert set(clients) == {*BENIGN_USERS, EXTRACTOR}
    calls = schedule()
    for name, stats in clients.items():
        assert stats["requests"] == sum(1 for c in calls if c.client == name)
        assert stats["allowed"] + stats["flagged"] + stats["degraded"] + stats["blocked"] == stats["requests"]
    for name in BENIGN_USERS:
        assert clients[name]["blocked"] == 0
        assert clients[name]["first_caught"] is None
    attacker = clients[EXTRACTOR]
    sweep = sum(1 for c in calls if c.client == EXTRACTOR and c.kind == "sweep")
    assert isinstance(attacker["first_caught"], int) and 1 <= attacker["first_caught"] <= sweep
    assert attacker["top_reasons"]
    assert summary["elapsed_seconds"] < 60
    assert "PASS" in printed and f"request #{attacker['first_caught']}" in printed
    assert sum(1 for line in printed.splitlines() if line.lstrip().startswith("+")) == len(calls)


@pytest.mark.slow
def test_template_detector_alone_catches_the_sweep(tmp_path: Path) -> None:
    """The template detector on its own catches the extractor's template sweep ("Explain step by
    step how to {subject}", whose subjects change the common-word skeleton) within 25 requests,
    long before the log probability probe."""
    out = tmp_path / "summary.json"
    assert main(["demo", "--detectors", "template_sweep", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    attacker = next(c for c in summary["clients"] if c["client"] == EXTRACTOR)
    assert isinstance(attacker["first_caught"], int) and attacker["first_caught"] <= 25
    assert "template_sweep:template_recurrence" in attacker["top_reasons"]
    assert summary["benign_blocked"] == []
    assert all(c["first_caught"] is None for c in summary["clients"] if c["client"] != EXTRACTOR)


@pytest.mark.slow
def test_demo_fails_when_nothing_can_catch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no detector the extractor goes uncaught: the summary says so and the exit status is 1."""
    out = tmp_path / "summary.json"
    assert main(["demo", "--detectors", "", "--quiet", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["detectors"] == []
    assert summary["attacker_caught"] is False
    assert summary["passed"] is False
    assert all(c["allowed"] == c["requests"] for c in summary["clients"])
    assert "NOT caught" in printed and "FAIL" in printed
    assert "Explain step by step" not in printed  # --quiet prints only the summary


def test_demo_rejects_an_unknown_detector(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown ``--detectors`` name stops the demo before any traffic, with exit status 2."""
    assert main(["demo", "--detectors", "no_such_detector"]) == 2
    captured = capsys.readouterr()
    assert "'no_such_detector'" in captured.err
    assert "mallory" not in captured.out


def test_schedule_is_deterministic_and_interleaved() -> None:
    """The simulated traffic depends only on the seed, and benign users overlap the extractor."""
    first, again, other = schedule(7), schedule(7), schedule(8)
    assert first == again
    assert first != other
    assert [c.at for c in first] == sorted(c.at for c in first)
    extractor = [c.at for c in first if c.client == EXTRACTOR]
    during = [c for c in first if c.role == "benign" and extractor[0] < c.at < extractor[-1]]
    assert len(during) >= 5
    assert len({c.prompt for c in first if c.role == "benign"}) >= 20

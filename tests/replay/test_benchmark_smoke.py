"""Smoke test of the detection benchmark harness (the full benchmark is not part of CI)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from benchmarks.detection.corpora import shared_data_dir
from benchmarks.detection.harness import evaluate, replay_in_process, standard_detectors
from benchmarks.detection.markdown import render, section, splice
from benchmarks.detection.scenarios import Scale, holdout_corpus, population, tuning_corpus


@pytest.fixture(autouse=True)
def _shared_data() -> None:
    path = shared_data_dir() / "inthewild_jailbreak_prompts.json"
    if not path.exists():
        pytest.fail(f"the benchmark needs ../shared/data (jailbreak prompts); not found at {path}")


@pytest.mark.slow
def test_quick_benchmark_replays_every_scenario_and_writes_tables(tmp_path: Path) -> None:
    """A tiny tuning population runs through the engine; every scenario gets metrics and tables."""
    scale = Scale.quick()
    streams = population(tuning_corpus(), "tuning", 5, scale)
    report, days = replay_in_process(streams, tmp_path / "log.jsonl", standard_detectors(None))
    metrics = evaluate(streams, report, days)
    assert set(metrics.families) == {"template", "coverage", "random_words", "probe"}
    assert metrics.families["template"]["clients"] == scale.attackers
    assert metrics.families["template"]["caught"] == scale.attackers  # a template sweep never escapes
    assert metrics.families["probe"]["caught_within"] == scale.attackers
    assert len(metrics.mixed) == 4 * 4 + 1
    assert set(metrics.campaigns) == {"camp-template", "camp-coverage", "camp-hydra", "camp-coverage-poisson"}
    assert metrics.campaigns["camp-template"]["accounts"] == scale.campaign_accounts
    assert metrics.benign.total > 0 and sum(c for c, _ in metrics.benign_clients.values()) == scale.users
    doc = tmp_path / "detection.md"
    doc.write_text("# Detection\n\nhand-written intro\n")
    splice(doc, render(["header"], [section("Tuning", metrics)]))
    splice(doc, render(["header again"], [section("Tuning", metrics)]))
    text = doc.read_text()
    assert text.startswith("# Detection\n\nhand-written intro\n")
    assert text.count("<!-- benchmark:start -->") == 1 and "header again" in text
    assert "| template |" in text


def test_holdout_corpus_is_disjoint_from_tuning() -> None:
    """No holdout question appears in the tuning corpus."""
    tuning = set(tuning_corpus().questions)
    holdout = holdout_corpus(random.Random(0))
    assert holdout.questions and not tuning & set(holdout.questions)

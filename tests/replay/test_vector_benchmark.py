"""Smoke test of the detection benchmark's classifier scenario (benchmarks/detection/vectors.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from benchmarks.detection.harness import evaluate, replay_in_process, standard_detectors
from benchmarks.detection.vectors import VECTOR_ATTACKS, VECTOR_PATH, VectorScale, Victim, vector_population

from distillguard.query import parse_query


def test_vector_requests_parse_as_predict_vectors() -> None:
    """Every request of the scenario is a ``vector`` query of the victim's width on the predict path."""
    streams = vector_population("tuning", 3, VectorScale(users=3, days=1, attackers=1, queries=30))
    for stream in streams:
        for _, path, body in stream.events:
            query = parse_query(json.dumps(body).encode())
            assert path == VECTOR_PATH and query.kind == "vector"
            assert query.vector is not None and len(query.vector) == 32


def test_victim_labels_its_own_samples() -> None:
    """The victim's Bayes classifier gives most natural samples of a class that class's label."""
    victim = Victim.build(7, 32, 10)
    rng = random.Random(0)
    right = sum(victim.predict(victim.sample(rng, c)) == c for c in range(10) for _ in range(20))
    assert right >= 190


def test_synthetic_attacks_are_caught_and_benign_apps_are_not(tmp_path: Path) -> None:
    """Through the replay engine with the default detectors: the Jacobian-based and FGSM-style
    attackers are caught within 100 queries, no benign vector client-day is flagged."""
    streams = vector_population("tuning", 4, VectorScale(users=30, days=2, attackers=2, queries=80))
    report, days = replay_in_process(streams, tmp_path / "log.jsonl", standard_detectors(None))
    metrics = evaluate(streams, report, days)
    assert set(metrics.families) == set(VECTOR_ATTACKS)
    for family in ("vec_jbda", "vec_jbda_tr", "vec_ifgsm"):
        assert metrics.families[family]["caught_within"] == 2, family
    assert metrics.benign.total > 0 and metrics.benign.total_flagged == 0

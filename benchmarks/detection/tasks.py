"""The benchmark's independent steps, as top-level functions so that they can run in parallel
worker processes (each regenerates its streams from its seed)."""

from __future__ import annotations

import random
from pathlib import Path

from distillguard.replay import Thresholds

from .harness import (
    BenignDays,
    Metrics,
    calibrate_command,
    evaluate,
    replay_command,
    replay_in_process,
    standard_detectors,
)
from .scenarios import Scale, holdout_corpus, population, tuning_corpus
from .streams import write_log
from .vectors import VectorScale, vector_population

__all__ = ["calibrate_task", "holdout_task", "tuning_task", "vector_task"]


def calibrate_task(
    part: str,
    seed: int,
    scale: Scale,
    work: Path,
    percentile: float,
    detectors: str | None,
    floor: float = 0.5,
) -> tuple[Path, int]:
    """``distillguard calibrate`` on a benign-only log of ``part``; return the thresholds file
    and the number of client-days it rests on."""
    corpus = tuning_corpus() if part == "tuning" else holdout_corpus(random.Random(seed))
    streams = population(corpus, part, seed, scale, benign_only=True)
    log = work / f"calibration-{part}-{floor:g}.jsonl"
    write_log(streams, log)
    out = work / f"thresholds-{part}-{floor:g}.json"
    calibrate_command(log, out, percentile=percentile, detectors=detectors, floor=floor)
    days = len({(s.name, int(t // 86_400)) for s in streams for t, _, _ in s.events})
    return out, days


def tuning_task(
    seed: int, scale: Scale, work: Path, thresholds: Path | None, detectors: str | None, tag: str
) -> Metrics:
    """The tuning population through the replay engine, in process."""
    streams = population(tuning_corpus(), "tuning", seed, scale)
    th = Thresholds.load(thresholds) if thresholds is not None else None
    log = work / f"tuning-{tag}.jsonl"
    report, days = replay_in_process(streams, log, standard_detectors(detectors), th)
    return evaluate(streams, report, days)


def holdout_task(
    seed: int, scale: Scale, work: Path, thresholds: Path, detectors: str | None, tag: str
) -> Metrics:
    """The holdout population through the ``distillguard replay`` command with ``thresholds``;
    the benign false positives from a second replay of its benign users alone."""
    corpus = holdout_corpus(random.Random(seed))
    streams = population(corpus, "holdout", seed, scale)
    log = work / f"holdout-{tag}.jsonl"
    write_log(streams, log)
    report = replay_command(log, work / f"holdout-{tag}.json", config=thresholds, detectors=detectors)
    benign_log = work / f"holdout-benign-{tag}.jsonl"
    write_log([s for s in streams if s.role == "benign"], benign_log)
    benign = replay_command(
        benign_log, work / f"holdout-benign-{tag}.json", config=thresholds, detectors=detectors
    )
    days = BenignDays()
    days.days["benign:all"] = benign["summary"]["client_days"]
    days.flagged["benign:all"] = benign["summary"]["flagged_client_days"]
    metrics = evaluate(streams, report, None)
    metrics.benign = days
    return metrics


def vector_task(
    part: str, seed: int, scale: VectorScale, work: Path, detectors: str | None, tag: str
) -> Metrics:
    """A classifier endpoint's population (benign vector clients and the vector attacks, see
    :mod:`.vectors`) through the replay engine, in process."""
    streams = vector_population(part, seed, scale)
    log = work / f"vectors-{part}-{tag}.jsonl"
    report, days = replay_in_process(streams, log, standard_detectors(detectors))
    return evaluate(streams, report, days)

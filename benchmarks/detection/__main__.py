"""``python -m benchmarks.detection``: run the detection benchmark and write ``docs/detection.md``.

Steps: (1) ``distillguard calibrate`` on benign-only logs (their own seeds) of the tuning and of
the holdout distribution; (2) the tuning population through the replay engine, with the
detectors' own thresholds and with the calibrated ones; (3) the holdout population (other
corpora, other attack variants) through the ``distillguard replay`` command, once with the
thresholds calibrated on the tuning distribution and once with thresholds calibrated on the
holdout's own benign traffic (what a deployment does). Independent steps run in parallel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from distillguard.detectors.defaults import DEFAULT_DETECTORS

from .markdown import render, section, splice, vector_section
from .scenarios import Scale
from .tasks import calibrate_task, holdout_task, tuning_task, vector_task
from .vectors import VectorScale

ROOT = Path(__file__).resolve().parents[2]
LOW_FLOOR = 0.25
VECTOR_NOTE = (
    'A classifier\'s predict endpoint (`{"inputs": [[...]]}` on `/v1/predict`) over a seeded Gaussian '
    "mixture: benign apps sending natural records of their few classes with re-sends and edited "
    "records (a tenth are batch scorers), and one client per attack: Papernot et al.'s Jacobian-based "
    "augmentation (JbDA), PRADA's JbDA-TR and T-RND-IFGSM, uniform random points, and natural-data "
    "Knockoff sampling (see `benchmarks/detection/vectors.py`). "
)
HOLDOUT_NOTE = (
    "Held-out corpora (English trivia, Italian, Spanish, Portuguese, Dutch, German, French, "
    "Indonesian), the other half of the jailbreak prompts, paraphrased templates, probes with "
    "random token ids and other bias values. Benign false positives come from a replay of the "
    "holdout's benign users alone (per-kind counts of flagged clients come from the full replay)."
)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _thresholds(path: Path) -> str:
    data = json.loads(path.read_text())["thresholds"]
    return ", ".join(f"`{k}` {v:.3f}" for k, v in sorted(data.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--detectors", help="detector names (default: the built-in default set)")
    parser.add_argument("--percentile", type=float, default=99.9)
    parser.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "detection.md", help="document to update")
    parser.add_argument("--no-write", action="store_true", help="print the tables instead of writing --out")
    parser.add_argument("--workdir", type=Path, help="keep the generated logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    scale = Scale.quick() if args.quick else Scale()
    vscale = VectorScale.quick() if args.quick else VectorScale()
    seed, det = args.seed, args.detectors
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(max(1, args.jobs)) as pool:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        _log("calibrating on benign-only logs")
        cal_t = pool.submit(calibrate_task, "tuning", seed + 1000, scale, work, args.percentile, det)
        cal_h = pool.submit(
            calibrate_task, "holdout", seed + 3000, scale.holdout(), work, args.percentile, det
        )
        cal_l = pool.submit(
            calibrate_task, "tuning", seed + 1000, scale, work, args.percentile, det, LOW_FLOOR
        )
        (tuned, tuned_days), (own, own_days), (low, _) = cal_t.result(), cal_h.result(), cal_l.result()
        _log("replaying the tuning and holdout populations")
        with_campaign = ",".join([*(det.split(",") if det else DEFAULT_DETECTORS), "campaign"])
        at_defaults = all(v == 0.5 for v in json.loads(tuned.read_text())["thresholds"].values())
        jobs = {
            "own": pool.submit(tuning_task, seed, scale, work, None, det, "own"),
            "calibrated-low": pool.submit(tuning_task, seed, scale, work, low, det, "low"),
            "campaign": pool.submit(tuning_task, seed, scale, work, None, with_campaign, "campaign"),
            "holdout-transfer": pool.submit(
                holdout_task, seed + 2000, scale.holdout(), work, tuned, det, "transfer"
            ),
            "holdout-own": pool.submit(holdout_task, seed + 2000, scale.holdout(), work, own, det, "own"),
        }
        jobs["vectors"] = pool.submit(vector_task, "tuning", seed + 4000, vscale, work, det, "own")
        jobs["vectors-holdout"] = pool.submit(vector_task, "holdout", seed + 5000, vscale, work, det, "own")
        if not at_defaults:
            jobs["calibrated"] = pool.submit(tuning_task, seed, scale, work, tuned, det, "calibrated")
        results = {name: job.result() for name, job in jobs.items()}
        thresholds_tuned, thresholds_own, thresholds_low = (
            _thresholds(tuned),
            _thresholds(own),
            _thresholds(low),
        )

    elapsed = time.perf_counter() - started
    command = "python -m benchmarks.detection" + (" --quick" if args.quick else "")
    command += f" --seed {seed}" if seed != 1 else ""
    command += f" --detectors {det}" if det else ""
    header = [
        f"Generated by `{command}` at commit {_commit()} on {dt.date.today().isoformat()} in "
        f"{elapsed:,.0f} s with {args.jobs} "
        f"worker processes (seed {seed}; tuning: {scale.users} benign users over {scale.days} days; "
        f"holdout: {scale.holdout().users}).",
        "",
        f"Calibration (`distillguard calibrate`, p{args.percentile:g}): on a benign tuning log "
        f"({tuned_days:,} client-days, seed {seed + 1000}): {thresholds_tuned}; on a benign holdout log "
        f"({own_days:,} client-days, seed {seed + 3000}): {thresholds_own}. With `--floor {LOW_FLOOR:g}` on "
        f"the tuning log: {thresholds_low}.",
        "",
    ]
    sections = [
        section("Tuning set, detectors' own thresholds", results["own"]),
        section("Tuning set, calibrated thresholds", results["calibrated"])
        if "calibrated" in results
        else [
            "### Tuning set, calibrated thresholds",
            "",
            "Every calibrated threshold is the floor (0.5, the flag level): the benign null of each "
            "detector stays below its own flag level at p99.9, so the calibrated replay is the replay "
            "above (not run twice).",
            "",
        ],
        section(
            f"Tuning set, calibrated thresholds with `--floor {LOW_FLOOR:g}`",
            results["calibrated-low"],
            "A floor below the flag level lets a detector whose benign null is quiet become more "
            "sensitive than its defaults.",
        ),
        section(
            "Tuning set, default detectors plus the opt-in `campaign` detector",
            results["campaign"],
            "The cross-account campaign detector (`distillguard.detectors.campaign`, not in the default "
            "set) scores a template family shared by many accounts of one group (tenant, network, "
            "user agent).",
        ),
        section(
            "Holdout set through `distillguard replay --config`, thresholds calibrated on the tuning set",
            results["holdout-transfer"],
            HOLDOUT_NOTE,
        ),
        section(
            "Holdout set through `distillguard replay --config`, thresholds calibrated on the holdout's "
            "own benign log",
            results["holdout-own"],
            "The deployment procedure: calibrate on a benign log of the same traffic (a different seed "
            "and different users than the evaluated ones), then replay.",
        ),
        vector_section(
            "Classifier endpoint (vector inputs), detectors' own thresholds",
            results["vectors"],
            VECTOR_NOTE + f"{vscale.dim_note('tuning')}.",
        ),
        vector_section(
            "Classifier endpoint, held-out mixture and input shape",
            results["vectors-holdout"],
            VECTOR_NOTE + f"{vscale.dim_note('holdout')}, not used while tuning.",
        ),
    ]
    generated = render(header, sections)
    if args.no_write:
        print(generated)
    else:
        splice(args.out, generated)
        _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

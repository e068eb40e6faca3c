"""The coverage-guided fuzz targets in ``tests/fuzz`` (atheris, libFuzzer), each run for a
bounded time (``DISTILLGUARD_FUZZ_SECONDS``, 15 by default; reliability.md F5 asks 60 for a
nightly run): no input raises, none takes 5 s (libFuzzer's ``-timeout``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("DISTILLGUARD_FUZZ_SECONDS", "15"))


@pytest.mark.timeout(SECONDS + 120)
@pytest.mark.parametrize("target", ["fuzz_pipeline", "fuzz_marking"])
def test_the_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            f"tests.fuzz.{target}",
            f"-max_total_time={SECONDS}",
            "-timeout=5",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 100,
    )
    report = run.stderr[-4000:]
    assert run.returncode == 0, report
    assert list(tmp_path.iterdir()) == [], report  # no crash, timeout or leak input written
    runs = [line for line in run.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 1000, report  # it did run

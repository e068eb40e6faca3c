"""``examples/gateway.env``: the production gateway settings of the documentation, sourced by a
real shell and built into a guard exactly as ``distillguard gateway`` builds it, so that the
file stays valid as the settings change."""

from __future__ import annotations

import subprocess
from pathlib import Path

from distillguard.limiting.storage import is_memory
from distillguard.settings import guard_from_env, settings_from_env

FILE = Path(__file__).resolve().parents[2] / "examples" / "gateway.env"


def sourced() -> dict[str, str]:
    """The variables the file sets, as ``set -a; . gateway.env`` in bash exports them."""
    out = subprocess.run(
        ["bash", "-c", 'set -a; . "$0"; env -0', str(FILE)], capture_output=True, check=True, env={}
    ).stdout.decode()
    pairs = (item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in pairs if k.startswith(("DISTILLGUARD_", "OTEL_"))}


def test_the_example_gateway_settings_build_a_production_guard() -> None:
    environ = sourced()
    assert environ["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    settings = settings_from_env(environ)
    assert settings.environment == "production" and settings.dev_defaults == ()
    assert not is_memory(settings.storage_uri)  # required by --workers
    guard = guard_from_env(environ)
    config = guard.plan.config
    assert [(r.name, r.unit) for r in config.rules] == [("out", "output_tokens"), ("spend", "cost")]
    assert config.rules[1].price_for("llama-3.1-70b").micros(1000, 500) == 1000
    assert (config.concurrency, dict(config.concurrency_tiers)) == (8, {"free": 2})
    assert config.auth_failures == "20/minute;100/hour"
    assert guard.policy.risk is not None
    assert (guard.policy.risk.block, guard.policy.risk.box_after_refusals) == (None, 20)
    assert guard.telemetry.config.hash_key and guard.detectors

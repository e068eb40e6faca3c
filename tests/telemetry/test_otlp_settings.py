"""``distillguard.telemetry.otlp``: when the ``OTEL_*`` variables ask for an OTLP export, and the
settings it refuses (checked before any provider is installed; the export itself is tested end to
end in ``test_otlp_export.py`` and through the gateway command)."""

from __future__ import annotations

import pytest

from distillguard.errors import ConfigurationError
from distillguard.telemetry.otlp import otlp_endpoint, otlp_from_env


@pytest.fixture(autouse=True)
def clean_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


def test_nothing_is_installed_without_an_endpoint() -> None:
    assert otlp_endpoint() is None
    assert otlp_from_env() is None


@pytest.mark.parametrize(
    "name",
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ],
)
def test_any_endpoint_variable_names_the_collector(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, " http://collector:4318 ")
    assert otlp_endpoint() == "http://collector:4318"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "TRUE")
    assert otlp_endpoint() is None and otlp_from_env() is None


@pytest.mark.parametrize(
    "name",
    [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ],
)
def test_another_protocol_than_http_protobuf_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv(name, "grpc")
    with pytest.raises(ConfigurationError, match=f"{name}='grpc'"):
        otlp_from_env()

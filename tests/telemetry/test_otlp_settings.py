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


def test_each_process_gets_its_own_service_instance_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resource :func:`otlp_from_env` builds (read here without installing providers) has
    a ``service.instance.id``: the environment's, else one of this process (recent SDKs make
    it; for SDKs that do not, as the 1.30 the ``otlp`` extra allows, distillguard adds one)."""
    from opentelemetry.sdk.resources import Resource

    from distillguard.telemetry import otlp

    ours = otlp._resource().attributes["service.instance.id"]
    assert isinstance(ours, str) and len(ours) == 36
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7")
    assert otlp._resource().attributes["service.instance.id"] == "pod-7"
    monkeypatch.setattr(otlp.Resource, "create", lambda: Resource({"service.name": "old-sdk"}))
    first, second = otlp._resource(), otlp._resource()
    assert first.attributes["service.name"] == "old-sdk"
    assert len(str(first.attributes["service.instance.id"])) == 36
    assert first.attributes["service.instance.id"] != second.attributes["service.instance.id"]

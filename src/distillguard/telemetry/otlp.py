"""Export to an OTLP collector, configured by the standard ``OTEL_*`` variables alone.

An application that embeds the guard installs its own OpenTelemetry SDK (``docs/telemetry.md``).
A process distillguard starts itself, such as ``distillguard gateway``, has no application code
to do it, so :func:`otlp_from_env` does what that code would: when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``) is set, it installs global SDK providers exporting spans
(a ``BatchSpanProcessor``) and metrics (a ``PeriodicExportingMetricReader``) over OTLP/HTTP
with protobuf (``pip install 'distillguard[otlp]'``). Everything else is the SDK's own reading
of the environment: the exporters' ``OTEL_EXPORTER_OTLP_*`` (headers, timeouts, certificates),
the resource's ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the sampler's
``OTEL_TRACES_SAMPLER``, the batch processor's ``OTEL_BSP_*`` and the reader's
``OTEL_METRIC_EXPORT_*``. ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_METRICS_EXPORTER=none`` turns
one signal off, ``OTEL_SDK_DISABLED=true`` both. Unless ``OTEL_RESOURCE_ATTRIBUTES`` names one, each
process gets its own ``service.instance.id`` (a random UUID): the worker processes of one
gateway (``--workers``) would otherwise report their cumulative counters as one stream, which
a collector cannot add up.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import uuid
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, Resource
from opentelemetry.sdk.trace import TracerProvider

from ..errors import ConfigurationError

__all__ = ["OtlpExport", "check_otlp_env", "otlp_endpoint", "otlp_from_env"]

logger = logging.getLogger("distillguard.telemetry")

_ENDPOINTS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)


@dataclass(frozen=True, slots=True)
class OtlpExport:
    """The providers :func:`otlp_from_env` installed (``None``: that signal is off)."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None

    def shutdown(self) -> None:
        """Flush and stop both providers (call it on exit, so that the last batch is sent)."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception as exc:  # an exporter failing at exit must not hide the exit
                    logger.warning("distillguard: telemetry shutdown failed (%s)", type(exc).__name__)


def _off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "none"


def otlp_endpoint() -> str | None:
    """The OTLP endpoint the environment names (the general one first), or ``None`` when it
    names none or ``OTEL_SDK_DISABLED`` is true."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return next((value.strip() for name in _ENDPOINTS if (value := os.environ.get(name, "")).strip()), None)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check_otlp_env() -> None:
    """Check what :func:`otlp_from_env` would need, without installing anything.

    Raises:
        ConfigurationError: when an ``OTEL_EXPORTER_OTLP_*PROTOCOL`` asks for another protocol
            than ``http/protobuf``, or an endpoint is set and the exporter is not installed.
    """
    for signal in ("", "TRACES_", "METRICS_"):
        name = f"OTEL_EXPORTER_OTLP_{signal}PROTOCOL"
        protocol = os.environ.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigurationError(f"{name}={protocol!r}: distillguard exports OTLP over http/protobuf")
    if otlp_endpoint() is not None and not _installed("opentelemetry.exporter.otlp.proto.http"):
        raise ConfigurationError(
            "an OTLP endpoint is set but the OTLP/HTTP exporter is not installed: "
            "pip install 'distillguard[otlp]'"
        )


def _resource() -> Resource:
    """The SDK's resource from the environment, with a ``service.instance.id`` of this process
    unless the environment names one (see the module docstring)."""
    resource = Resource.create()
    if SERVICE_INSTANCE_ID in resource.attributes:
        return resource
    return resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))


def otlp_from_env() -> OtlpExport | None:
    """Install global SDK providers exporting over OTLP/HTTP when the environment names an
    OTLP endpoint (see the module docstring); ``None`` when it names none.

    Raises:
        ConfigurationError: when ``OTEL_EXPORTER_OTLP_PROTOCOL`` asks for another protocol
            than ``http/protobuf``, or the exporter is not installed.
    """
    if otlp_endpoint() is None:
        return None
    check_otlp_env()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = _resource()
    tracer_provider = meter_provider = None
    if not _off("OTEL_TRACES_EXPORTER"):
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
    if not _off("OTEL_METRICS_EXPORTER"):
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
        metrics.set_meter_provider(meter_provider)
    return OtlpExport(tracer_provider, meter_provider)

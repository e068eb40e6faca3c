"""A guarded FastAPI app whose OpenTelemetry SDK is configured only from the standard
``OTEL_*`` environment variables, served by uvicorn. Run by ``test_otlp_export.py`` in a
subprocess: ``python -m tests.telemetry.otlp_app <port>``.

Nothing telemetry-related is configured in code: the OTLP/HTTP exporters read
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the other ``OTEL_EXPORTER_OTLP_*`` variables), the resource
reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the batch processor and the
periodic reader read ``OTEL_BSP_*`` and ``OTEL_METRIC_EXPORT_*``. The providers are installed
globally and the guard (built without providers) uses them, as does FastAPI's native telemetry.
On shutdown (SIGTERM) the providers flush everything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def configure_from_env() -> tuple[TracerProvider, MeterProvider]:
    """Install SDK providers built from the environment alone (OTLP over HTTP/protobuf)."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol != "http/protobuf":
        raise SystemExit(f"this app exports OTLP over http/protobuf only, not {protocol}")
    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def build_app() -> object:
    """The guarded app (HS256 test tokens, a detector that flags, generous limits)."""
    tracer_provider, meter_provider = configure_from_env()

    from distillguard import DistillGuardMiddleware, Guard, LimitConfig
    from tests.helpers import StaticDetector, jwt_config
    from tests.telemetry.apps import fastapi_app

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        yield
        tracer_provider.shutdown()
        meter_provider.shutdown()

    guard = Guard(
        jwt=jwt_config(),
        limits=LimitConfig(default="1000/minute"),
        detectors=[StaticDetector(0.6, name="flagger")],
    )
    app = fastapi_app(lifespan=lifespan)
    app.add_middleware(DistillGuardMiddleware, guard=guard)
    return app


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    uvicorn.run(build_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

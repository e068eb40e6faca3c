"""A guarded FastAPI app whose OpenTelemetry SDK is configured only from the standard
``OTEL_*`` environment variables, served by uvicorn. Run by ``test_otlp_export.py`` in a
subprocess: ``python -m tests.telemetry.otlp_app <port>``.

Nothing telemetry-related is configured in code (:func:`distillguard.telemetry.otlp.
otlp_from_env` installs the providers): the OTLP/HTTP exporters read
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the other ``OTEL_EXPORTER_OTLP_*`` variables), the resource
reads ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the batch processor and the
periodic reader read ``OTEL_BSP_*`` and ``OTEL_METRIC_EXPORT_*``. The providers are installed
globally and the guard (built without providers) uses them, as does FastAPI's native telemetry.
On shutdown (SIGTERM) the providers flush everything.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from distillguard.telemetry.otlp import otlp_from_env


def build_app() -> object:
    """The guarded app (HS256 test tokens, a detector that flags, generous limits)."""
    export = otlp_from_env()
    assert export is not None and export.tracer_provider and export.meter_provider, "no OTLP endpoint set"

    from distillguard import DistillGuardMiddleware, Guard, LimitConfig
    from tests.helpers import StaticDetector, jwt_config
    from tests.telemetry.apps import fastapi_app

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        yield
        export.shutdown()

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

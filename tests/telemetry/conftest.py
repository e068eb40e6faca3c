"""Fixtures for the telemetry tests: a private meter provider read in memory, and readers that
flatten spans and metric points for assertions. Nothing here touches the global providers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """An in-memory metric reader (cumulative); call :func:`metric_points` to collect."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """A private meter provider read by ``metric_reader`` (never set globally)."""
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Collect now: ``{metric name: [(attributes, point), ...]}`` for the ``distillguard`` scope."""
    data = reader.get_metrics_data()
    out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    if data is None:
        return out
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name != "distillguard":
                continue
            for metric in scope_metrics.metrics:
                points = out.setdefault(metric.name, [])
                for point in metric.data.data_points:
                    points.append((dict(point.attributes or {}), point))
    return out


def value_of(points: list[tuple[dict[str, Any], Any]], **attributes: Any) -> Any:
    """The value of the one point whose attributes equal ``attributes`` (keys with dots are
    given with ``__`` for ``.``); 0 when there is none."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    for attrs, point in points:
        if attrs == wanted:
            return point.value
    return 0

"""Extracting a trace context only when the request carries a header the propagator reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.propagators.textmap import CarrierT, Getter, TextMapPropagator, default_getter

from distillguard.telemetry.propagation import ASGI_GETTER, WSGI_GETTER, carries_context


class _CustomHeader(TextMapPropagator):
    """A propagator reading one non-W3C header (as B3 or Jaeger propagators do)."""

    def extract(
        self, carrier: CarrierT, context: Any = None, getter: Getter[CarrierT] = default_getter
    ) -> Any:
        return context

    def inject(self, carrier: CarrierT, context: Any = None, setter: Any = None) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {"X-Custom-Trace"}


@pytest.fixture
def custom_propagator() -> Iterator[None]:
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_CustomHeader())
    yield
    propagate.set_global_textmap(previous)


def test_w3c_headers_are_detected_in_asgi_and_wsgi_carriers() -> None:
    """A traceparent or baggage header says there is context to extract; other headers do not."""
    plain = {"headers": [(b"host", b"x"), (b"authorization", b"Bearer t")]}
    assert not carries_context(plain, ASGI_GETTER)
    assert carries_context({"headers": [*plain["headers"], (b"traceparent", b"00-...")]}, ASGI_GETTER)
    assert carries_context({"headers": [(b"baggage", b"k=v")]}, ASGI_GETTER)
    assert not carries_context({"HTTP_HOST": "x"}, WSGI_GETTER)
    assert carries_context({"HTTP_HOST": "x", "HTTP_TRACEPARENT": "00-..."}, WSGI_GETTER)
    assert carries_context({"HTTP_TRACESTATE": "a=b"}, WSGI_GETTER)


def test_a_custom_propagators_own_header_is_honoured(custom_propagator: None) -> None:
    """With a propagator reading another header, that header (not traceparent) triggers extraction."""
    assert carries_context({"headers": [(b"x-custom-trace", b"1")]}, ASGI_GETTER)
    assert not carries_context({"headers": [(b"traceparent", b"00-...")]}, ASGI_GETTER)
    assert carries_context({"HTTP_X_CUSTOM_TRACE": "1"}, WSGI_GETTER)
    assert not carries_context({"HTTP_TRACEPARENT": "00-..."}, WSGI_GETTER)


class _DictGetter(Getter[dict[str, str]]):
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


def test_other_getters_always_extract() -> None:
    """A getter distillguard does not know is always given the chance to extract."""
    assert carries_context({}, _DictGetter())

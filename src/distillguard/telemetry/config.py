"""Telemetry settings and the hashed form of client ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..request import HTTP_TOKEN

__all__ = ["TelemetryConfig", "check_header_name", "hash_identifier"]

_SPAN_MODES = frozenset({"child", "enrich"})


def check_header_name(name: str | None, setting: str) -> None:
    """Raise :class:`ConfigurationError` unless ``name`` is ``None`` or a lower-case field name
    (``setting`` names the setting in the message)."""
    if name is not None and (not HTTP_TOKEN.fullmatch(name) or name != name.lower()):
        raise ConfigurationError(f"{setting} must be a lower-case header name, or None")


def hash_identifier(value: str, key: bytes = b"") -> str:
    """The hashed form of a client id as it appears on spans (16 hex digits).

    Operators can compute it to find a known client in their traces. Any string hashes, one
    holding a lone surrogate (valid JSON in a token's claim) included.
    """
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=key, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """Telemetry settings.

    Args:
        hash_identifiers: record a hash of the client id instead of the id itself.
        hash_key: a secret key for that hash (up to 64 bytes), so that ids cannot be guessed by
            hashing candidates; operators with the key can still compute it.
        max_attribute_length: longer string attributes (and list items) are cut.
        max_span_attributes: the most attributes distillguard sets on its span; past it the
            least important ones (per-detector scores first) are left out.
        record_path: record ``url.path`` (turn off when paths carry identifiers).
        record_client_address: record ``client.address`` (the peer address).
        record_user_agent: record ``user_agent.original`` (off by default: free text chosen by
            the client).
        record_usage: read the token ``usage`` of chat, completion and embedding responses
            (JSON and SSE streams) for ``gen_ai.usage.*`` when the span is recording.
        span: where the guard records a request when a span is already current (the
            ``SERVER`` span of the framework's instrumentation): ``"child"`` (default) starts
            the guard's own ``distillguard.guard`` span as its child; ``"enrich"`` puts the
            guard's attributes and decision event on that span instead and starts none (one
            span per request instead of two: about half the guard's telemetry cost, see
            docs/benchmarks.md). With no current span both start the guard's own span.
        request_id_header: the header that carries the request's trace id (32 hex digits) on
            the guard's own refusals (401, 403, 413, 429, ...), when the trace is sampled: the
            ``x-request-id`` that OpenAI's SDKs report as an error's ``request_id``, so that a
            client's error report leads to the span. A lower-case field name, or ``None``: no
            such header.
    """

    hash_identifiers: bool = True
    hash_key: bytes = b""
    max_attribute_length: int = 256
    max_span_attributes: int = 64
    record_path: bool = True
    record_client_address: bool = True
    record_user_agent: bool = False
    record_usage: bool = True
    span: str = "child"
    request_id_header: str | None = "x-request-id"

    def __post_init__(self) -> None:
        if len(self.hash_key) > 64:
            raise ConfigurationError("TelemetryConfig.hash_key must be at most 64 bytes")
        if self.max_attribute_length < 16:
            raise ConfigurationError("TelemetryConfig.max_attribute_length must be at least 16")
        if self.span not in _SPAN_MODES:
            raise ConfigurationError(f"TelemetryConfig.span must be one of {sorted(_SPAN_MODES)}")
        check_header_name(self.request_id_header, "TelemetryConfig.request_id_header")
        if self.max_span_attributes < 8:
            raise ConfigurationError("TelemetryConfig.max_span_attributes must be at least 8")

"""The one exception hierarchy of distillguard.

Denials (401, 403, 413, 429, 503) are :class:`~distillguard.Decision` values, never exceptions
that cross the adapter boundary. Exceptions are for programming and configuration errors::

    DistillGuardError
    ├── ConfigurationError      invalid settings, raised at construction (fail fast)
    │   └── PluginError         a detector plugin could not be loaded or validated
    ├── AuthenticationError     a token failed verification (internal; becomes a 401 decision)
    ├── StateError              shared detector or limiter state could not be reached
    └── UpstreamError           the gateway's model server failed after its answer started
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DistillGuardError",
    "PluginError",
    "StateError",
    "UpstreamError",
]


class DistillGuardError(Exception):
    """Base class of every exception raised by distillguard."""


class ConfigurationError(DistillGuardError, ValueError):
    """The configuration is invalid. Raised when a guard or a config object is built."""


class PluginError(ConfigurationError):
    """A detector plugin could not be loaded or is not a valid detector.

    Attributes:
        name: the entry-point name (or detector name) that failed.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"detector plugin {name!r}: {message}")
        self.name = name


class AuthenticationError(DistillGuardError):
    """A bearer token was missing or failed verification.

    Attributes:
        reason: a short machine-readable reason for logs and tests (for example
            ``"expired"``). It never reaches the client, which always gets one generic message.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StateError(DistillGuardError):
    """Shared state (limiter storage, detector state) could not be read or written."""


class UpstreamError(DistillGuardError):
    """The model server behind :class:`~distillguard.gateway.Gateway` failed after its answer
    had started (before, the gateway answers 502 or 504 itself): raised to abort the response."""

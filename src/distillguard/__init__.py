"""distillguard: protect model-serving HTTP APIs against model extraction and distillation.

Drop-in ASGI and WSGI middleware that authenticates clients from JWTs, enforces limits with the
``limits`` library, scores each client's query stream with pluggable detectors, and records
OpenTelemetry spans of what it decided.
"""

from __future__ import annotations

from ._version import __version__
from .asgi import DistillGuardMiddleware
from .decision import Action, Decision
from .detectors import AsyncDetector, Detector, DetectorResult, Observation
from .errors import (
    AuthenticationError,
    ConfigurationError,
    DistillGuardError,
    PluginError,
    StateError,
    UpstreamError,
)
from .guard import Guard
from .identity import APIKey, APIKeys, Identity, JWKSKeys, JWTConfig
from .limiting import LimitConfig
from .policy import Policy
from .problems import Problem
from .query import Query
from .telemetry import TelemetryConfig
from .wsgi import DistillGuardWSGIMiddleware

__all__ = [
    "APIKey",
    "APIKeys",
    "Action",
    "AsyncDetector",
    "AuthenticationError",
    "ConfigurationError",
    "Decision",
    "Detector",
    "DetectorResult",
    "DistillGuardError",
    "DistillGuardMiddleware",
    "DistillGuardWSGIMiddleware",
    "Guard",
    "Identity",
    "JWKSKeys",
    "JWTConfig",
    "LimitConfig",
    "Observation",
    "PluginError",
    "Policy",
    "Problem",
    "Query",
    "StateError",
    "TelemetryConfig",
    "UpstreamError",
    "__version__",
]

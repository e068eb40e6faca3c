"""Who is calling: bearer-token verification (JWT) and the verified :class:`Identity`.

Owns token parsing, key selection and claim checks. Imports nothing from the rest of
distillguard but :mod:`distillguard.errors`.
"""

from __future__ import annotations

from .apikeys import APIKey, APIKeys, APIKeyVerifier
from .identity import Identity
from .jwks import JWKSKeys, JWKSStatus, KeysUnavailable
from .jwt import JWTConfig, JWTVerifier
from .keys import KeyResolver, StaticKeys

__all__ = [
    "APIKey",
    "APIKeyVerifier",
    "APIKeys",
    "Identity",
    "JWKSKeys",
    "JWKSStatus",
    "JWTConfig",
    "JWTVerifier",
    "KeyResolver",
    "KeysUnavailable",
    "StaticKeys",
]

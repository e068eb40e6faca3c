"""The verifier's token cache follows a resolver's ``generation``."""

from __future__ import annotations

from typing import Any

from distillguard.identity import JWTVerifier
from tests.helpers import Keys, jwt_config, make_token


class FlippingResolver:
    """Serves one RSA key; ``generation`` is bumped by the test (a key left the set)."""

    def __init__(self, key: Any) -> None:
        self.key: Any = key
        self.generation = 0

    def key_for(self, kid: str | None, alg: str) -> Any:
        return self.key


def test_a_generation_change_drops_cached_tokens(keys: Keys) -> None:
    """A token verified (and cached) under a key is re-verified after the generation changes."""
    resolver = FlippingResolver(keys.rsa.public)
    verifier = JWTVerifier(jwt_config(algorithms=["RS256"], key=None, key_resolver=resolver))
    token = make_token(key=keys.rsa)
    assert verifier.verify(token).client_id == "client-1"
    resolver.key = None  # the key is gone...
    assert verifier.verify(token).client_id == "client-1"  # ...but the cache still answers
    resolver.generation += 1
    try:
        verifier.verify(token)
    except Exception as exc:
        assert type(exc).__name__ == "AuthenticationError"
    else:
        raise AssertionError("a token of a removed key was still accepted")

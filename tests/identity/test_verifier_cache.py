"""The verifier's token cache follows a resolver's ``generation`` and ``available_until``."""

from __future__ import annotations

import gc
import math
import time
import tracemalloc
from typing import Any

import jwt as pyjwt
import pytest

from distillguard.identity import JWTVerifier, KeysUnavailable
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


class OutageResolver:
    """Serves one RSA key until ``available_until`` (monotonic) passes, then raises
    KeysUnavailable, like a resolver whose key source went away; counts its calls."""

    def __init__(self, key: Any) -> None:
        self.key = key
        self.available_until = math.inf
        self.calls = 0

    def key_for(self, kid: str | None, alg: str) -> Any:
        self.calls += 1
        if time.monotonic() > self.available_until:
            raise KeysUnavailable(retry_after=7)
        return self.key


def test_a_cached_token_gets_the_resolvers_answer_while_its_keys_are_unavailable(keys: Keys) -> None:
    """Cache hits never call the resolver; once its ``available_until`` has passed, a cached token
    gets the same KeysUnavailable as a token never seen, and is served from the cache again once
    the keys are back."""
    resolver = OutageResolver(keys.rsa.public)
    verifier = JWTVerifier(jwt_config(algorithms=["RS256"], key=None, key_resolver=resolver))
    token = make_token(key=keys.rsa)
    identity = verifier.verify(token)
    for _ in range(100):
        assert verifier.verify(token) is identity
    assert resolver.calls == 1
    resolver.available_until = -math.inf
    with pytest.raises(KeysUnavailable) as cached:
        verifier.verify(token)
    with pytest.raises(KeysUnavailable) as fresh:
        verifier.verify(make_token(key=keys.rsa, sub="someone-else"))
    assert cached.value.reason == fresh.value.reason == "keys_unavailable"
    assert cached.value.retry_after == fresh.value.retry_after == 7
    resolver.available_until = time.monotonic() + 60
    calls = resolver.calls
    assert verifier.verify(token) is identity
    assert resolver.calls == calls


def test_cached_identities_read_their_claims_from_the_token() -> None:
    """A cached identity's ``claims`` are the verified token's claims, read on demand, for
    every client (interleaved reads never mix two tokens up)."""
    verifier = JWTVerifier(jwt_config())
    tokens = [make_token(sub=f"c{i}", org=f"org-{i}", tier="gold", roles=["a", str(i)]) for i in range(5)]
    identities = [verifier.verify(t) for t in tokens]
    for _ in range(2):
        for i, identity in enumerate(identities):
            assert identity.claims["org"] == f"org-{i}"
            assert identity.claims["roles"] == ["a", str(i)]
            assert dict(identity.claims) == pyjwt.decode(tokens[i], options={"verify_signature": False})
            assert "sub" in identity.claims and "nope" not in identity.claims
            assert identity.claims.get("nope") is None
    assert identities[0] is verifier.verify(tokens[0])  # from the cache
    assert "org-0" not in repr(identities[0].claims)


def test_cached_identities_share_tier_tenant_and_scopes() -> None:
    """Identities with the same tier, tenant and scopes hold one object of each."""
    verifier = JWTVerifier(jwt_config())
    a = verifier.verify(make_token(sub="a", tier="gold", scope="read write"))
    b = verifier.verify(make_token(sub="b", tier="gold", scope="write read"))
    assert a.tier == "gold" and a.scopes == frozenset({"read", "write"})
    assert a.tier is b.tier and a.tenant is b.tenant and a.scopes is b.scopes


def test_a_cached_identity_is_compact() -> None:
    """Verifying a new client's token keeps well under 1 KB: the token (the cache key), a
    cache entry and a compact identity, no dict of claims (which alone took about 0.9 KB)."""
    verifier = JWTVerifier(jwt_config(cache_size=5_000))
    tokens = [make_token(sub=f"client-{i:06d}", tier="gold", scope="read write") for i in range(2_000)]
    for token in tokens[:10]:
        verifier.verify(token)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for token in tokens[10:]:
        verifier.verify(token)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    retained = sum(s.size_diff for s in after.compare_to(before, "filename")) / (len(tokens) - 10)
    assert retained < 450, f"{retained:.0f} B per cached identity"

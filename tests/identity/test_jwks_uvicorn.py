"""JWKS keys behind a real uvicorn server: prefetched in the app's lifespan, and a hung JWKS
refresh does not delay real HTTP requests."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from distillguard import DistillGuardMiddleware, JWKSKeys
from tests.helpers import jwt_config, make_token
from tests.identity.conftest import JWKSServer, to_jwk
from tests.servers import serve_in_thread

pytestmark = pytest.mark.timeout(60)


def test_prefetch_in_lifespan_and_a_hung_refresh_behind_uvicorn(
    jwks_server: JWKSServer, guard_factory: Any, keys: Any
) -> None:
    """The app's lifespan prefetches the keys (one fetch before the first request); later, with
    the one refresh hanging on a black-holed JWKS, 50 concurrent HTTP requests all get 200 fast."""
    jwks_server.set_keys([to_jwk(keys.rsa, "rsa"), to_jwk(keys.ed25519, "ed")])
    resolver = JWKSKeys(jwks_server.url, timeout=3.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(resolver.prefetch, 3.0)
        yield
        resolver.close()

    async def predict(request: Request) -> JSONResponse:
        decision = request.state.distillguard
        return JSONResponse({"client": decision.identity.client_id})

    app = Starlette(routes=[Route("/v1/predict", predict)], lifespan=lifespan)
    guard = guard_factory(jwt=jwt_config(algorithms=["RS256", "EdDSA"], key=None, key_resolver=resolver))
    app.add_middleware(DistillGuardMiddleware, guard=guard)

    with serve_in_thread(app, lifespan="on") as base_url:
        assert resolver.status().ready and jwks_server.hits == 1
        with httpx.Client(base_url=base_url, timeout=5) as client:
            token = make_token(key=keys.ed25519, headers={"kid": "ed"}, sub="alice")
            response = client.get("/v1/predict", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 200 and response.json() == {"client": "alice"}

        async def burst(prefix: str) -> tuple[list[int], list[float], float]:
            async def one(client: httpx.AsyncClient, token: str) -> tuple[int, float]:
                t0 = time.perf_counter()
                response = await client.get("/v1/predict", headers={"authorization": f"Bearer {token}"})
                return response.status_code, time.perf_counter() - t0

            tokens = [
                make_token(key=keys.rsa, headers={"kid": "rsa"}, sub=f"{prefix}-{i}") for i in range(50)
            ]
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
                t0 = time.perf_counter()
                results = await asyncio.gather(*(one(client, t) for t in tokens))
                return [s for s, _ in results], [d for _, d in results], time.perf_counter() - t0

        healthy_statuses, healthy_latencies, healthy_total = asyncio.run(burst("healthy"))
        assert healthy_statuses == [200] * 50
        healthy = (healthy_latencies, healthy_total)

        jwks_server.hang_refresh(resolver)
        statuses, latencies, total = asyncio.run(burst("hung"))
        for label, (lat, tot) in (("healthy JWKS", healthy), ("hung refresh", (latencies, total))):
            print(
                f"\nuvicorn, 50 concurrent requests, {label}: total {tot * 1000:.1f} ms, "
                f"p50 {statistics.median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms",
                end="",
            )
        assert statuses == [200] * 50
        assert max(latencies) < 1.5  # waiting on the fetch would take >= 3 s
        assert jwks_server.hits == 2 and jwks_server.in_flight == 1

"""Print a development bearer token for the example apps.

    python -m examples.make_token --sub alice --tier free

The token is signed with ``DISTILLGUARD_JWT_SECRET`` for ``DISTILLGUARD_JWT_ISSUER`` and
``DISTILLGUARD_JWT_AUDIENCE``, or with the development defaults when they are unset (the same
values the apps fall back to). Use it as ``Authorization: Bearer <token>`` or as the
``api_key`` of the ``openai`` client.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence

import jwt

from distillguard.errors import ConfigurationError
from distillguard.settings import settings_from_env

__all__ = ["main", "mint_token"]


def mint_token(
    sub: str,
    *,
    tier: str | None = None,
    scopes: Sequence[str] = (),
    ttl: int = 3600,
    environ: Mapping[str, str] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token for ``sub`` that the example apps (with the same environment) accept."""
    settings = settings_from_env(environ)
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": sub,
        "iat": issued,
        "exp": issued + ttl,
    }
    if tier:
        claims["tier"] = tier
    if scopes:
        claims["scope"] = " ".join(scopes)
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and print a token."""
    parser = argparse.ArgumentParser(prog="python -m examples.make_token", description=__doc__.split("\n")[0])
    parser.add_argument("--sub", required=True, help="the client identity (the sub claim)")
    parser.add_argument("--tier", help="the client's tier (the tier claim), e.g. free or pro")
    parser.add_argument("--scope", action="append", default=[], help="a scope (repeatable)")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    args = parser.parse_args(argv)
    try:
        token = mint_token(args.sub, tier=args.tier, scopes=args.scope, ttl=args.ttl)
    except ConfigurationError as exc:
        print(f"make_token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())

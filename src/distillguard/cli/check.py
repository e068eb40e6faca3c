"""``distillguard check``: is this deployment's configuration sound, and does what it names answer?

It reads the ``DISTILLGUARD_*`` variables as the examples and the gateway do
(:mod:`distillguard.settings`), builds the guard (so that a bad limit string, an unknown detector
or a development default in production fails here, not at the first request), then asks what
the guard depends on: the JWKS URL for its first key set, the limit storage (Redis) for an
answer, and for the gateway the model server (``DISTILLGUARD_UPSTREAM``) for any HTTP answer.
It prints the effective settings, never a secret (the JWT secret, the watermark key and a
password in a URI are not shown), and one line per check; ``--json`` prints the same as one JSON
document. Exit status 0 when everything answers, 1 when a dependency does not, 2 for a
configuration error. Meant for a deployment's pre-flight step or an init container.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError
from ..identity.apikeys import APIKeyVerifier
from ..telemetry.otlp import otlp_endpoint

__all__ = ["redacted_uri", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``check`` sub-command."""
    parser = subparsers.add_parser(
        "check",
        help="check the DISTILLGUARD_* configuration and what it depends on",
        description=(
            "Build the guard from the DISTILLGUARD_* variables, fetch the JWKS key set and ask "
            "the limit storage (and DISTILLGUARD_UPSTREAM, when set) for an answer. Exit status 0 "
            "when everything answers, 1 when a dependency does not, 2 for a configuration error."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the JWKS key set and the upstream (default 5)",
    )
    parser.set_defaults(func=run)


def redacted_uri(uri: str) -> str:
    """``uri`` with the password of its user part (if any) replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "(not a URI)"
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _summary(settings: Any, guard: Any) -> dict[str, Any]:
    """The effective settings, without secrets."""
    config = guard.plan.config
    if settings.jwks_url:
        keys = f"JWKS {settings.jwks_url}"
    elif settings.jwt_public_key_file:
        keys = f"public key file {settings.jwt_public_key_file}"
    else:
        keys = "HS256 secret (DISTILLGUARD_JWT_SECRET)"
    return {
        "environment": settings.environment,
        "development_defaults": list(settings.dev_defaults),
        "jwt": {
            "keys": keys,
            "algorithms": list(settings.algorithms),
            "issuer": settings.jwt_issuer,
            "audience": settings.jwt_audience,
            "limits_claim": settings.limits_claim or None,
        },
        "api_keys": len(keys.keys) if isinstance(keys := guard.verifier, APIKeyVerifier) else 0,
        "limits": {
            "default": config.default,
            "tiers": dict(config.tiers),
            "storage": redacted_uri(config.storage_uri),
            "outage": config.outage,
            "headers": config.header_style if config.headers else "off",
            "rules": [f"{r.name}: {r.limits} ({r.unit})" for r in config.rules],
            "concurrency": config.concurrency,
            "tier_concurrency": dict(config.concurrency_tiers),
            "auth_failures": config.auth_failures or "off",
            "refund_server_errors": config.refund_server_errors,
        },
        "detectors": [d.name for d in guard.detectors],
        "thresholds": settings.thresholds_file or "the detectors' own",
        "risk": dict(settings.risk) or "the defaults",
        "otlp": redacted_uri(endpoint) if (endpoint := otlp_endpoint()) else None,
        "shadow": guard.policy.shadow,
        "watermark": guard.watermark is not None,
        "client_hash": "keyed" if guard.telemetry.config.hash_key else "unkeyed",
        "error_format": guard.error_format,
        "request_log": f"{settings.request_log} (sample {settings.request_log_sample:g})"
        if settings.request_log
        else None,
        "max_body_bytes": guard.max_body_bytes,
    }


def _check_keys(guard: Any, timeout: float) -> dict[str, Any]:
    verifier = guard.verifier
    if verifier is None or not verifier.fetches_keys:
        return {"name": "jwt keys", "ok": True, "detail": "configured keys (nothing to fetch)"}
    started = time.monotonic()
    ok = verifier.prefetch_keys(timeout)
    took = time.monotonic() - started
    detail = f"key set fetched in {took:.2f} s" if ok else f"no key set within {timeout:g} s"
    return {"name": "jwt keys", "ok": ok, "detail": detail}


def _check_storage(guard: Any) -> dict[str, Any]:
    limiter = guard.sync_performer().limiter
    uri = redacted_uri(guard.plan.config.storage_uri)
    if not limiter.remote:
        return {"name": "limit storage", "ok": True, "detail": f"{uri} (in process: nothing to ask)"}
    started = time.monotonic()
    ok, reason = limiter.probe()
    took = time.monotonic() - started
    detail = f"{uri} answers ({took * 1000:.0f} ms)" if ok else f"{uri} does not answer ({reason})"
    return {"name": "limit storage", "ok": ok, "detail": detail + _parser(uri)}


def _check_upstream(url: str, timeout: float) -> dict[str, Any]:
    """Whether the gateway's model server answers HTTP at all (any status: a model server
    may answer its base path with 404), directly as the gateway calls it (no proxy)."""
    import urllib.error
    import urllib.request

    shown = redacted_uri(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.monotonic()
    try:
        parts = urlsplit(url)
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # any answer will do
        with opener.open(urllib.request.Request(bare, method="GET"), timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # an answer all the same
        status = exc.code
    except (OSError, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        return {"name": "upstream", "ok": False, "detail": f"{shown} does not answer ({str(reason)[:120]})"}
    took = time.monotonic() - started
    return {
        "name": "upstream",
        "ok": True,
        "detail": f"{shown} answers (HTTP {status}, {took * 1000:.0f} ms)",
    }


def _parser(uri: str) -> str:
    """Which reply parser redis-py uses, for a Redis URI: hiredis (the ``redis`` extra installs
    it) costs less CPU per round trip than redis-py's own (``docs/benchmarks.md``, "Storage")."""
    if not uri.split("://", 1)[0].removeprefix("async+").startswith("redis"):
        return ""
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:
        return ""
    if HIREDIS_AVAILABLE:
        return "; replies parsed by hiredis"
    return "; replies parsed in Python (install hiredis, or distillguard[redis], for less CPU per request)"


def run(args: argparse.Namespace) -> int:
    """Run ``check``; return the exit status."""
    from ..settings import guard_from_env, settings_from_env

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_env()
        guard = guard_from_env()
    except ConfigurationError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    checks = [_check_keys(guard, args.timeout), _check_storage(guard)]
    upstream = os.environ.get("DISTILLGUARD_UPSTREAM", "").strip()
    if upstream:  # the gateway's model server
        checks.append(_check_upstream(upstream, args.timeout))
    ok = all(c["ok"] for c in checks)
    summary = _summary(settings, guard)
    if args.json:
        print(json.dumps({"ok": ok, "settings": summary, "checks": checks}, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
        for check in checks:
            print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    return 0 if ok else 1

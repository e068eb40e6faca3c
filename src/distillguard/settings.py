"""Building a :class:`~distillguard.Guard` from ``DISTILLGUARD_*`` environment variables.

The examples, the demo and any twelve-factor deployment read their settings the same way::

    from distillguard.settings import guard_from_env

    guard = guard_from_env()                                  # os.environ
    guard = guard_from_env(tracer_provider=provider)          # plus keyword overrides for Guard

================================  ====================================  ======================
variable                          meaning                               development default
================================  ====================================  ======================
``DISTILLGUARD_ENV``              ``development`` or ``production``     ``development``
``DISTILLGUARD_JWT_SECRET``       HS256 secret (at least 32 bytes)      :data:`DEV_SECRET`
``DISTILLGUARD_JWT_ISSUER``       accepted ``iss``                      :data:`DEV_ISSUER`
``DISTILLGUARD_JWT_AUDIENCE``     accepted ``aud``                      :data:`DEV_AUDIENCE`
``DISTILLGUARD_JWKS_URL``         verify tokens with the keys of this   (the secret)
                                  JWKS URL instead of the secret
``DISTILLGUARD_JWT_PUBLIC_KEY_``  a file holding the public key (PEM,   (the secret)
``FILE``                          DER or JWK) instead of the secret
``DISTILLGUARD_JWT_ALGORITHMS``   accepted algorithms, comma-separated  ``HS256``; ``RS256``
                                                                        with a JWKS or a key
``DISTILLGUARD_API_KEYS_FILE``    opaque API keys too: a JSON file of   JWTs only
                                  SHA-256 digest to client (see
                                  :class:`~distillguard.APIKeys`)
``DISTILLGUARD_LIMITS``           default limits (``limits`` notation)  ``60/minute;1000/day``
``DISTILLGUARD_TIER_LIMITS``      limits by tier, as a JSON object:     every tier gets
                                  ``{"pro": "600/minute;10000/day"}``   ``DISTILLGUARD_LIMITS``
``DISTILLGUARD_RULES``            extra windows by tier, route and      none
                                  model, in requests, tokens or cost: a
                                  JSON array of :class:`~distillguard.
                                  limiting.LimitRule` fields (see
                                  :func:`~distillguard.limiting.rules.
                                  rules_from_json`)
``DISTILLGUARD_CONCURRENCY``      requests a client may have in flight  no cap
``DISTILLGUARD_TIER_CONCURRENCY`` the in-flight cap by tier, a JSON     every tier gets
                                  object: ``{"free": 2, "pro": 16}``    ``DISTILLGUARD_CONCURRENCY``
``DISTILLGUARD_AUTH_FAILURES``    windows of failed authentications     off
                                  per client address, e.g.
                                  ``20/minute;100/hour``
``DISTILLGUARD_OUTAGE``           ``local_fallback``, ``fail_open`` or  ``local_fallback``
                                  ``fail_closed`` (storage down)
``DISTILLGUARD_STORAGE_URI``      ``limits`` storage URI                ``memory://``
``DISTILLGUARD_RATELIMIT_HEADERS`` the quota fields responses carry:     ``ietf``
                                  ``ietf`` (``RateLimit``), ``openai``
                                  (``x-ratelimit-*``), ``both`` or
                                  ``off``
``DISTILLGUARD_SHADOW``           shadow mode (``true``/``false``)      ``false``
``DISTILLGUARD_SHARED_STATE``     detector state shared through a       ``true``
                                  Redis storage (``true``/``false``)
``DISTILLGUARD_TIER_DETECTION``   per-tier detection, e.g.              every tier enforces
                                  ``partner=shadow,internal=off``
``DISTILLGUARD_DETECTORS``        entry-point names, comma-separated    every registered one but
                                                                       the built-in opt-in ones
``DISTILLGUARD_RISK``             the risk policy's settings, a JSON    :class:`~distillguard.
                                  object of :class:`~distillguard.risk.  risk.RiskPolicy`'s
                                  RiskPolicy` fields (``thresholds``    defaults
                                  aside), e.g. ``{"block": null,
                                  "penalty_seconds": 7200}``
``DISTILLGUARD_THRESHOLDS_FILE``  per-detector thresholds of the risk   the detectors' own
                                  policy: the file ``distillguard
                                  calibrate`` writes
``DISTILLGUARD_MAX_BODY_BYTES``   request body cap in bytes             ``1048576``
``DISTILLGUARD_CLIENT_HASH_KEY``  secret key of the client-id hash on   an unkeyed hash
                                  spans and in logs (16 to 64 bytes; see
                                  :class:`~distillguard.telemetry.
                                  TelemetryConfig`)
``DISTILLGUARD_WATERMARK_KEY``    secret key of the response watermark  no watermark
                                  (at least 16 bytes; see
                                  :mod:`distillguard.watermark`)
================================  ====================================  ======================

An empty ``DISTILLGUARD_DETECTORS`` loads no detector. Scores are turned into verdicts by the
risk policy (:class:`~distillguard.risk.RiskPolicy`: decaying per-client risk, throttle, degrade,
block and penalty box), the same as ``distillguard replay`` uses.

With the JWT variables unset the guard starts on the development defaults and logs a warning
naming them. With ``DISTILLGUARD_ENV=production`` nothing falls back: the issuer, the audience
and the keys (the secret, the JWKS URL or the public key file) are required, and the
development secret is refused. Only one source of keys may be set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from .detectors import ENTRY_POINT_GROUP
from .errors import ConfigurationError
from .guard import Guard
from .identity import APIKeys, JWKSKeys, JWTConfig
from .limiting import LimitConfig, LimitRule
from .limiting.rules import rules_from_json
from .policy import DETECTION_MODES, DetectionMode, Policy
from .problems import ERROR_FORMATS
from .request_log import RequestLog
from .risk import RiskPolicy
from .telemetry import TelemetryConfig
from .watermark import Watermark

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_STORAGE_URI",
    "DEV_AUDIENCE",
    "DEV_ISSUER",
    "DEV_SECRET",
    "Settings",
    "guard_from_env",
    "registered_detectors",
    "settings_from_env",
]

_N = TypeVar("_N", int, float)

logger = logging.getLogger("distillguard.settings")

DEV_SECRET = "distillguard-development-secret-not-for-production"
"""The HS256 secret used when ``DISTILLGUARD_JWT_SECRET`` is unset (development only)."""
DEV_ISSUER = "https://dev.distillguard.local"
"""The issuer used when ``DISTILLGUARD_JWT_ISSUER`` is unset (development only)."""
DEV_AUDIENCE = "distillguard-dev"
"""The audience used when ``DISTILLGUARD_JWT_AUDIENCE`` is unset (development only)."""

DEFAULT_LIMITS = "60/minute;1000/day"
DEFAULT_STORAGE_URI = "memory://"
DEFAULT_MAX_BODY_BYTES = 1_048_576

_PREFIX = "DISTILLGUARD_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The settings read from the environment (see the module docstring for the variables).

    Attributes:
        environment: ``"development"`` or ``"production"``.
        jwt_secret: the HS256 secret.
        jwt_issuer: the accepted issuer.
        jwt_audience: the accepted audience.
        limits: the default limits (``limits`` notation).
        storage_uri: the ``limits`` storage URI.
        shadow: shadow mode.
        shared_state: :attr:`Policy.shared_state` (effective with a Redis storage only).
        tier_detection: ``(tier, mode)`` pairs for :attr:`Policy.tier_detection`.
        detectors: the entry-point names of the detectors to load.
        max_body_bytes: the request body cap.
        watermark_key: the key of the response watermark (empty: none).
        jwks_url: the JWKS URL the keys come from (empty: the secret or the key file).
        jwt_public_key_file: the file holding the public key (empty: the secret or the JWKS).
        jwt_algorithms: the accepted algorithms (empty: ``HS256`` with the secret, ``RS256``
            with a JWKS or a public key).
        tier_limits: ``(tier, limits)`` pairs for :attr:`LimitConfig.tiers`.
        outage: :attr:`LimitConfig.outage`.
        ratelimit_headers: :attr:`LimitConfig.header_style`, or ``"off"`` for
            ``LimitConfig(headers=False)``.
        api_keys_file: the JSON file of API keys (empty: JWTs only).
        rules: :attr:`LimitConfig.rules`.
        concurrency: :attr:`LimitConfig.concurrency`.
        tier_concurrency: ``(tier, cap)`` pairs for :attr:`LimitConfig.concurrency_tiers`.
        auth_failures: :attr:`LimitConfig.auth_failures`.
        client_hash_key: the key of the client-id hash on spans (empty: unkeyed).
        refund_server_errors: :attr:`LimitConfig.refund_server_errors`.
        error_format: how refusals are written (``Guard(error_format=...)``).
        limits_claim: :attr:`JWTConfig.limits_claim` (empty: none).
        request_log: the file a :class:`~distillguard.request_log.RequestLog` records the
            requests in (empty: none; ``{pid}`` is replaced by the process id).
        request_log_sample: the share of clients it records.
        thresholds_file: a thresholds file of ``distillguard calibrate`` for the risk policy
            (empty: the detectors' own thresholds).
        risk: ``(field, value)`` pairs of :class:`~distillguard.risk.RiskPolicy` settings.
        dev_defaults: the variables that fell back to a development default.
    """

    environment: str = "development"
    jwt_secret: str = field(default=DEV_SECRET, repr=False)
    jwt_issuer: str = DEV_ISSUER
    jwt_audience: str = DEV_AUDIENCE
    limits: str = DEFAULT_LIMITS
    storage_uri: str = DEFAULT_STORAGE_URI
    shadow: bool = False
    shared_state: bool = True
    tier_detection: tuple[tuple[str, DetectionMode], ...] = ()
    detectors: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    watermark_key: str = field(default="", repr=False)
    jwks_url: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: tuple[str, ...] = ()
    tier_limits: tuple[tuple[str, str], ...] = ()
    outage: str = "local_fallback"
    ratelimit_headers: str = "ietf"
    api_keys_file: str = ""
    rules: tuple[LimitRule, ...] = ()
    concurrency: int | None = None
    tier_concurrency: tuple[tuple[str, int], ...] = ()
    auth_failures: str = ""
    thresholds_file: str = ""
    risk: tuple[tuple[str, Any], ...] = ()
    client_hash_key: str = field(default="", repr=False)
    refund_server_errors: bool = False
    error_format: str = "problem"
    limits_claim: str = ""
    request_log: str = ""
    request_log_sample: float = 1.0
    dev_defaults: tuple[str, ...] = ()

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The accepted algorithms: as set, else ``RS256`` for a JWKS or a public key and
        ``HS256`` for the secret."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        return ("RS256",) if self.jwks_url or self.jwt_public_key_file else ("HS256",)

    def jwt_config(self) -> JWTConfig:
        """The :class:`~distillguard.JWTConfig` these settings describe: the secret, the JWKS
        URL (a :class:`~distillguard.JWKSKeys` resolver) or the public key file."""
        algorithms = list(self.algorithms)
        common: dict[str, Any] = {
            "algorithms": algorithms,
            "issuer": self.jwt_issuer,
            "audience": self.jwt_audience,
            "limits_claim": self.limits_claim or None,
        }
        if self.jwks_url:
            return JWTConfig(key_resolver=JWKSKeys(self.jwks_url, algorithms=algorithms), **common)
        if self.jwt_public_key_file:
            try:
                key = Path(self.jwt_public_key_file).read_bytes()
            except OSError as exc:
                raise ConfigurationError(
                    f"DISTILLGUARD_JWT_PUBLIC_KEY_FILE cannot be read: {exc.strerror}"
                ) from None
            return JWTConfig(key=key, **common)
        return JWTConfig(key=self.jwt_secret, **common)

    def risk_policy(self) -> RiskPolicy:
        """The risk policy: :attr:`risk`'s settings, with the thresholds of
        :attr:`thresholds_file` if set."""
        build: Callable[..., RiskPolicy] = RiskPolicy
        if self.thresholds_file:
            from .replay.calibration import Thresholds

            try:
                build = Thresholds.load(self.thresholds_file).risk_policy
            except ConfigurationError as exc:
                raise ConfigurationError(f"{_PREFIX}THRESHOLDS_FILE: {exc}") from None
        try:
            return build(**dict(self.risk))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{_PREFIX}RISK: {exc}") from None

    def guard_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~distillguard.Guard`."""
        return {
            "jwt": self.jwt_config(),
            "api_keys": APIKeys.from_file(self.api_keys_file) if self.api_keys_file else None,
            "limits": LimitConfig(
                default=self.limits,
                storage_uri=self.storage_uri,
                tiers=dict(self.tier_limits),
                outage=self.outage,  # type: ignore[arg-type]  # checked by LimitConfig
                headers=self.ratelimit_headers != "off",
                header_style="ietf" if self.ratelimit_headers == "off" else self.ratelimit_headers,
                rules=self.rules,
                concurrency=self.concurrency,
                concurrency_tiers=dict(self.tier_concurrency),
                auth_failures=self.auth_failures,
                refund_server_errors=self.refund_server_errors,
            ),
            "detectors": list(self.detectors),
            "policy": Policy(
                shadow=self.shadow,
                risk=self.risk_policy(),
                tier_detection=dict(self.tier_detection),
                shared_state=self.shared_state,
            ),
            "max_body_bytes": self.max_body_bytes,
            "telemetry": TelemetryConfig(hash_key=self.client_hash_key.encode()),
            "watermark": Watermark(self.watermark_key) if self.watermark_key else None,
            "on_decision": self.request_recorder(),
            "error_format": self.error_format,
        }

    def request_recorder(self) -> RequestLog | None:
        """The request log :attr:`request_log` names (``None``: none)."""
        if not self.request_log:
            return None
        try:
            return RequestLog(self.request_log, sample=self.request_log_sample)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{_PREFIX}REQUEST_LOG: {exc}") from None


def registered_detectors() -> tuple[str, ...]:
    """The names in the ``distillguard.detectors`` entry-point group, sorted, without the
    built-in opt-in ones (:data:`~distillguard.detectors.defaults.OPT_IN_DETECTORS`: they load
    only when named)."""
    from .detectors.defaults import OPT_IN_DETECTORS

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return tuple(sorted(names - OPT_IN_DETECTORS))


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def _error_format(raw: str | None) -> str:
    value = (raw or "problem").strip().lower()
    if value not in ERROR_FORMATS:
        raise ConfigurationError(
            f"DISTILLGUARD_ERROR_FORMAT must be {' or '.join(ERROR_FORMATS)}, got {raw!r}"
        )
    return value


def _parsed(name: str, raw: str, convert: Callable[[str], _N], kind: str) -> _N:
    """``raw`` read by ``convert``, or a :class:`ConfigurationError` saying it is not ``kind``."""
    try:
        return convert(raw.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None


def _share(name: str, raw: str) -> float:
    value = _parsed(name, raw, float, "a number")
    if not 0.0 < value <= 1.0:
        raise ConfigurationError(f"{name} must be in (0, 1], got {value}")
    return value


def _int(name: str, raw: str) -> int:
    value = _parsed(name, raw, int, "an integer")
    if value < 1:
        raise ConfigurationError(f"{name} must be positive, got {value}")
    return value


_NUMBER = (int, float)
_RISK_FIELDS: dict[str, tuple[type, ...]] = {
    "flag": _NUMBER,
    "throttle": (*_NUMBER, type(None)),
    "degrade": (*_NUMBER, type(None)),
    "block": (*_NUMBER, type(None)),
    "half_life": _NUMBER,
    "throttle_limits": (str,),
    "penalty_seconds": _NUMBER,
    "box_after_refusals": (int, type(None)),
    "refusal_window": _NUMBER,
    "weights": (dict,),
    "combine": (str,),
    "max_clients": (int,),
    "max_penalties": (int,),
    "shared": (bool,),
}
"""The :class:`RiskPolicy` fields ``DISTILLGUARD_RISK`` sets, with their JSON types (the
thresholds come from ``DISTILLGUARD_THRESHOLDS_FILE``)."""


def _risk(raw: str) -> tuple[tuple[str, Any], ...]:
    """``DISTILLGUARD_RISK``: a JSON object of :data:`_RISK_FIELDS`, strictly typed."""
    name = _PREFIX + "RISK"
    doc = _json_object(raw)
    if doc is None:
        raise ConfigurationError(f"{name} must be a JSON object of RiskPolicy fields")
    for key, value in doc.items():
        kinds = _RISK_FIELDS.get(key)
        if kinds is None:
            raise ConfigurationError(f"{name}: unknown field {key!r}; the fields are {sorted(_RISK_FIELDS)}")
        wrong = (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds)
        if not wrong and key == "weights":
            wrong = not all(isinstance(w, _NUMBER) and not isinstance(w, bool) for w in value.values())
        if wrong:
            raise ConfigurationError(f"{name}: {key!r} has the wrong type")
    return tuple(doc.items())


def _client_hash_key(raw: str) -> str:
    if raw and not 16 <= len(raw.encode()) <= 64:
        raise ConfigurationError("DISTILLGUARD_CLIENT_HASH_KEY must be 16 to 64 bytes long")
    return raw


def _tier_detection(raw: str) -> tuple[tuple[str, DetectionMode], ...]:
    """``"partner=shadow, internal=off"`` as ``(tier, mode)`` pairs."""
    pairs: list[tuple[str, DetectionMode]] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        tier, sep, mode = (x.strip() for x in item.partition("="))
        if not sep or not tier or mode not in DETECTION_MODES:
            raise ConfigurationError(
                f"DISTILLGUARD_TIER_DETECTION must be tier=enforce|shadow|off pairs, got {item!r}"
            )
        pairs.append((tier, mode))
    return tuple(pairs)


def _json_object(raw: str) -> dict[str, Any] | None:
    """``raw`` as a JSON object, or ``None`` when it is not one."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _by_tier(name: str, raw: str, kind: type, example: str) -> tuple[tuple[str, Any], ...]:
    """A JSON object of tier to ``kind`` values as ``(tier, value)`` pairs."""
    doc = _json_object(raw)
    if doc is None or not all(isinstance(v, kind) and not isinstance(v, bool) for v in doc.values()):
        raise ConfigurationError(f"{name} must be a JSON object of tier to {example}")
    return tuple(doc.items())


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from ``environ`` (``os.environ`` by default), without logging.

    Raises:
        ConfigurationError: for an invalid value, or development defaults under
            ``DISTILLGUARD_ENV=production``.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(_PREFIX + name)
        return None if value is None else value.strip()

    environment = (get("ENV") or "development").lower()
    if environment not in ("development", "production"):
        raise ConfigurationError(f"DISTILLGUARD_ENV must be development or production, got {environment!r}")
    defaults: list[str] = []
    jwt: dict[str, str] = {}
    jwks_url = get("JWKS_URL") or ""
    key_file = get("JWT_PUBLIC_KEY_FILE") or ""
    sources = [
        n
        for n, v in (
            ("JWT_SECRET", get("JWT_SECRET")),
            ("JWKS_URL", jwks_url),
            ("JWT_PUBLIC_KEY_FILE", key_file),
        )
        if v
    ]
    if len(sources) > 1:
        raise ConfigurationError(
            "set only one of " + ", ".join(_PREFIX + n for n in sources) + " (the token keys)"
        )
    for name, field_name, default in (
        ("JWT_SECRET", "jwt_secret", DEV_SECRET),
        ("JWT_ISSUER", "jwt_issuer", DEV_ISSUER),
        ("JWT_AUDIENCE", "jwt_audience", DEV_AUDIENCE),
    ):
        value = get(name)
        if not value:
            if name != "JWT_SECRET" or not sources:  # a JWKS or a key file needs no secret
                defaults.append(_PREFIX + name)
            value = default
        jwt[field_name] = value
    if environment == "production":
        if defaults:
            raise ConfigurationError(
                "DISTILLGUARD_ENV=production needs " + ", ".join(defaults) + " (no development defaults)"
            )
        if jwt["jwt_secret"] == DEV_SECRET and not (jwks_url or key_file):
            raise ConfigurationError("the development JWT secret is refused when DISTILLGUARD_ENV=production")
    algorithms = tuple(a.strip() for a in (get("JWT_ALGORITHMS") or "").split(",") if a.strip())
    tier_limits = get("TIER_LIMITS")
    outage = get("OUTAGE") or "local_fallback"
    if outage not in ("local_fallback", "fail_open", "fail_closed"):
        raise ConfigurationError(
            f"DISTILLGUARD_OUTAGE must be local_fallback, fail_open or fail_closed, got {outage!r}"
        )
    ratelimit_headers = (get("RATELIMIT_HEADERS") or "ietf").strip().lower()
    if ratelimit_headers not in ("ietf", "openai", "both", "off"):
        raise ConfigurationError(
            f"DISTILLGUARD_RATELIMIT_HEADERS must be ietf, openai, both or off, got {ratelimit_headers!r}"
        )

    detectors_raw = get("DETECTORS")
    if detectors_raw is None:
        detectors = registered_detectors()
    else:
        detectors = tuple(n.strip() for n in detectors_raw.split(",") if n.strip())
    limits = get("LIMITS")
    storage = get("STORAGE_URI")
    shadow = get("SHADOW")
    shared = get("SHARED_STATE")
    tiers = get("TIER_DETECTION")
    body = get("MAX_BODY_BYTES")
    rules = get("RULES")
    concurrency = get("CONCURRENCY")
    tier_concurrency = get("TIER_CONCURRENCY")
    return Settings(
        environment=environment,
        limits=DEFAULT_LIMITS if limits is None else limits,
        storage_uri=storage or DEFAULT_STORAGE_URI,
        shadow=False if shadow is None else _bool("DISTILLGUARD_SHADOW", shadow),
        shared_state=True if shared is None else _bool("DISTILLGUARD_SHARED_STATE", shared),
        tier_detection=() if tiers is None else _tier_detection(tiers),
        detectors=detectors,
        max_body_bytes=DEFAULT_MAX_BODY_BYTES if body is None else _int("DISTILLGUARD_MAX_BODY_BYTES", body),
        watermark_key=get("WATERMARK_KEY") or "",
        jwks_url=jwks_url,
        jwt_public_key_file=key_file,
        jwt_algorithms=algorithms,
        tier_limits=()
        if not tier_limits
        else _by_tier(_PREFIX + "TIER_LIMITS", tier_limits, str, 'limits, e.g. {"pro": "600/minute"}'),
        outage=outage,
        ratelimit_headers=ratelimit_headers,
        api_keys_file=get("API_KEYS_FILE") or "",
        rules=rules_from_json(rules, _PREFIX + "RULES") if rules else (),
        concurrency=_int(_PREFIX + "CONCURRENCY", concurrency) if concurrency else None,
        tier_concurrency=()
        if not tier_concurrency
        else _by_tier(_PREFIX + "TIER_CONCURRENCY", tier_concurrency, int, 'caps, e.g. {"free": 2}'),
        auth_failures=get("AUTH_FAILURES") or "",
        thresholds_file=get("THRESHOLDS_FILE") or "",
        risk=_risk(risk) if (risk := get("RISK")) else (),
        client_hash_key=_client_hash_key(get("CLIENT_HASH_KEY") or ""),
        refund_server_errors=_bool(_PREFIX + "REFUND_SERVER_ERRORS", refund)
        if (refund := get("REFUND_SERVER_ERRORS"))
        else False,
        error_format=_error_format(get("ERROR_FORMAT")),
        limits_claim=(get("LIMITS_CLAIM") or "").strip(),
        request_log=get("REQUEST_LOG") or "",
        request_log_sample=_share(_PREFIX + "REQUEST_LOG_SAMPLE", sample)
        if (sample := get("REQUEST_LOG_SAMPLE"))
        else 1.0,
        dev_defaults=tuple(defaults),
        **jwt,
    )


def guard_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Guard:
    """Build a :class:`~distillguard.Guard` from ``DISTILLGUARD_*`` variables.

    Args:
        environ: the variables (``os.environ`` by default).
        **overrides: keyword arguments for :class:`~distillguard.Guard` that replace what the
            environment says (e.g. ``tracer_provider=``, ``policy=``, ``detectors=``).

    Logs a warning when development defaults are in use.

    Raises:
        ConfigurationError: for an invalid variable (e.g. ``DISTILLGUARD_LIMITS=lots``), an
            unknown detector name, or development defaults in production.
    """
    settings = settings_from_env(environ)
    if settings.dev_defaults:
        logger.warning(
            "distillguard: DEVELOPMENT defaults in use because %s not set (tokens: %s, issuer %s, "
            "audience %s%s). Never deploy like this: set DISTILLGUARD_JWT_SECRET (or "
            "DISTILLGUARD_JWKS_URL), DISTILLGUARD_JWT_ISSUER and DISTILLGUARD_JWT_AUDIENCE, and "
            "DISTILLGUARD_ENV=production.",
            ", ".join(settings.dev_defaults),
            ",".join(settings.algorithms),
            settings.jwt_issuer,
            settings.jwt_audience,
            ", the public development secret" if _PREFIX + "JWT_SECRET" in settings.dev_defaults else "",
        )
    kwargs = settings.guard_kwargs()
    kwargs.update(overrides)
    guard = Guard(**kwargs)
    risk = guard.policy.risk
    unknown = sorted(set(risk.thresholds) - {d.name for d in guard.detectors}) if risk is not None else []
    if unknown:  # a plugin may be missing, or DISTILLGUARD_DETECTORS leaves it out
        logger.warning(
            "distillguard: the thresholds file names detectors this guard does not run: %s",
            ", ".join(unknown),
        )
    return guard

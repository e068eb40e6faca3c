"""The :class:`Guard`: configuration, detectors and telemetry, shared by every adapter."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ._clock import steady_time
from ._drivers import adrive, drive
from ._performers import AsyncPerformer, SyncPerformer
from .decision import Action, Decision
from .detectors import is_async_detector, load_detectors, validate_detector
from .detectors._sharing import StateShare, shares_records
from .errors import ConfigurationError
from .flow import (
    Flow,
    evaluate,
    identify,
    release as flow_release,
    status as flow_status,
    usage as flow_usage,
)
from .identity import APIKeys, APIKeyVerifier, Identity, JWTConfig, JWTVerifier
from .limiting import LimitConfig, LimitPlan, WindowUsage
from .limiting._table import BoundedTable
from .limiting.admission import admit
from .limiting.limiter import AsyncLimiter, Limiter
from .limiting.outage import LimiterStats
from .limiting.storage import hash_tag, is_memory
from .policy import Policy
from .problems import ERROR_FORMATS, ErrorFormat, Problem
from .request import HTTP_TOKEN, GuardRequest
from .risk import ClientStatus, RiskEngine
from .telemetry import Telemetry, TelemetryConfig
from .watermark import Watermark

__all__ = ["Guard"]

_T = TypeVar("_T")

logger = logging.getLogger("distillguard")

DetectorSpec = Any


class Guard:
    """Everything the middleware needs to decide, built and validated once.

    Constructing a guard opens no connections. Hand it to
    :class:`~distillguard.asgi.DistillGuardMiddleware` or
    :class:`~distillguard.wsgi.DistillGuardWSGIMiddleware`.

    Args:
        jwt: bearer-token verification, or ``None`` to identify clients by address only
            (for trusted networks and demos) or by API key.
        api_keys: opaque API keys (``sk-...``) as bearer tokens, each mapped to a client
            (:class:`~distillguard.identity.APIKeys`); with ``jwt`` too, a JWT-shaped token is
            verified as a JWT and any other as an API key.
        limits: request limits (per client, by tier).
        detectors: detector instances, and/or names (or a ``{name: options}`` mapping) loaded
            from the ``distillguard.detectors`` entry-point group.
        policy: how detector scores become verdicts.
        telemetry: span settings.
        tracer_provider: the OpenTelemetry provider (the global one when ``None``).
        meter_provider: the OpenTelemetry provider for the guard's metrics (the global one
            when ``None``); see ``docs/telemetry.md``.
        exempt_paths: paths served without any check (exact match, or prefix when ending in
            ``/``), e.g. health checks.
        exempt_preflight: pass CORS preflight requests (``OPTIONS`` with
            ``Access-Control-Request-Method``) to the app unchecked: browsers send them without
            credentials, and the app's CORS middleware answers them.
        max_body_bytes: larger request bodies get 413 ``request_too_large``.
        on_internal_error: when the guard itself fails (a bug), ``"allow"`` the request (the
            default; recorded on the span and counted in ``distillguard.guard.errors``) or
            ``"deny"`` it with a 500 problem. Either way the token is still required: a
            request whose token does not verify gets its 401 (or 403), and an allowed one
            reaches the app with its verified identity.
        on_decision: called with each decision and its request, once the guard has decided
            (every guarded request, refusals included; not the exempt ones): for logs, alerts
            or a ban list. It runs on the request's path, so it must be quick (queue any I/O);
            an exception it raises is logged and the request goes on.
        websockets: ``"pass"`` (the default) hands WebSocket connections to the app untouched;
            ``"authenticate"`` checks each handshake like a request without a body (token,
            scopes, limits, the penalty box; one charge per connection) and refuses it with the
            problem's status (or closes it with code 1008 when the server cannot send an HTTP
            response to a handshake). The messages of an accepted connection are not read.
        websocket_token_protocol: for browsers, which cannot set ``Authorization`` on a
            WebSocket: a prefix (e.g. ``"bearer."``) marking the ``Sec-WebSocket-Protocol``
            entry that carries the token (``new WebSocket(url, ["realtime", "bearer." +
            token])``). A handshake without an ``Authorization`` header is authenticated with
            that token, and the entry is removed from the handshake the app sees (it never
            echoes the token back). ``None`` (the default): only the header counts.
        clock: the time source (unix seconds), for tests; by default a clock that never
            steps (:func:`~distillguard._clock.steady_time`: windows, penalties and risk decay
            last their real seconds whatever the wall clock does), and the wall clock for
            token expiry.
        watermark: a keyed :class:`~distillguard.watermark.Watermark` applied to the text of
            every chat and completion answer the guard lets through (JSON and streamed), so
            that a model distilled from them can be proven to be (``docs/watermark.md``); off
            in shadow mode.
        error_format: how the guard's refusals are written: ``"problem"`` (RFC 9457
            ``application/problem+json``, the default) or ``"openai"`` (OpenAI's
            ``{"error": {"message", "type", "param", "code"}}``, as the model servers that
            imitate its API answer their own errors). Same statuses, headers and ``code``.

    Example::

        guard = Guard(
            jwt=JWTConfig(algorithms=["RS256"], key=public_pem, issuer="https://idp", audience="api"),
            limits=LimitConfig(default="60/minute;1000/day", tiers={"pro": "600/minute"}),
            detectors=["near_duplicate", "parameter_probe"],
        )
        app.add_middleware(DistillGuardMiddleware, guard=guard)

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        jwt: JWTConfig | None,
        api_keys: APIKeys | None = None,
        limits: LimitConfig | None = None,
        detectors: Iterable[DetectorSpec] | Mapping[str, Mapping[str, Any]] = (),
        policy: Policy | None = None,
        telemetry: TelemetryConfig | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        exempt_paths: Sequence[str] = ("/health", "/healthz", "/livez", "/readyz"),
        exempt_preflight: bool = True,
        max_body_bytes: int = 1_048_576,
        on_internal_error: Literal["allow", "deny"] = "allow",
        on_decision: Callable[[Decision, GuardRequest], None] | None = None,
        websockets: Literal["pass", "authenticate"] = "pass",
        websocket_token_protocol: str | None = None,
        clock: Callable[[], float] | None = None,
        watermark: Watermark | None = None,
        error_format: ErrorFormat = "problem",
    ) -> None:
        if jwt is not None and not isinstance(jwt, JWTConfig):
            raise ConfigurationError("jwt must be a JWTConfig or None")
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be positive")
        if on_internal_error not in ("allow", "deny"):
            raise ConfigurationError("on_internal_error must be 'allow' or 'deny'")
        if error_format not in ERROR_FORMATS:
            raise ConfigurationError(f"error_format must be one of {', '.join(ERROR_FORMATS)}")
        self.error_format: ErrorFormat = error_format
        if websockets not in ("pass", "authenticate"):
            raise ConfigurationError("websockets must be 'pass' or 'authenticate'")
        if websocket_token_protocol is not None and (
            not websocket_token_protocol or HTTP_TOKEN.fullmatch(websocket_token_protocol) is None
        ):
            raise ConfigurationError(
                "websocket_token_protocol must be a non-empty subprotocol prefix (token chars)"
            )
        if isinstance(exempt_paths, str) or not all(
            isinstance(p, str) and p.startswith("/") for p in exempt_paths
        ):  # a bare string would exempt "/", i.e. everything
            raise ConfigurationError("exempt_paths must be a list of paths starting with '/'")
        jwt_verifier = JWTVerifier(jwt, clock=clock or time.time) if jwt is not None else None
        if api_keys is not None and not isinstance(api_keys, APIKeys):
            raise ConfigurationError("api_keys must be an APIKeys or None")
        self.verifier: JWTVerifier | APIKeyVerifier | None = (
            APIKeyVerifier(api_keys, jwt_verifier) if api_keys is not None else jwt_verifier
        )
        several_issuers = jwt is not None and not isinstance(jwt.issuer, str) and len(set(jwt.issuer)) > 1
        self.plan = LimitPlan(limits or LimitConfig(), per_tenant=several_issuers)
        self.limiter_stats = LimiterStats()
        # every adapter of this guard counts memory windows in one table (memory:// is per
        # process, not per app), and the sync limiter is built once
        self._counters = BoundedTable(self.plan.config.memory_max_keys, clock=clock)
        self._sync_limiter: Limiter | None = None
        self._lock = threading.Lock()
        self._internal_errors: dict[tuple[str, str], int] = {}  # (type, place) -> times seen
        self.policy = policy or Policy()
        in_memory = is_memory(self.plan.config.storage_uri)  # per process: nothing to share
        self.risk = (
            RiskEngine(self.policy.risk, shared=not in_memory, cluster=self.plan.cluster)
            if self.policy.risk is not None
            else None
        )
        self.telemetry = Telemetry(telemetry or TelemetryConfig(), tracer_provider, meter_provider)
        self.detectors: tuple[Any, ...] = tuple(self._detectors(detectors))
        # each detector, and whether its results are checked (:func:`~distillguard.detectors.
        # _protocol.checked_result`): every one not shipped with distillguard is
        self.detector_kinds: tuple[tuple[Any, bool], ...] = tuple(
            (d, not type(d).__module__.startswith("distillguard.detectors.")) for d in self.detectors
        )
        # with a shared storage, each client's detector state lives there too
        self.state_share: StateShare | None = None
        if self.policy.shared_state and not in_memory:
            share = StateShare(
                self.detectors, self.policy.state_ttl, tag=hash_tag if self.plan.cluster else None
            )
            if share:
                self.state_share = share
                logger.info("distillguard: detector state shared through the limit storage: %s", share.names)
        # ... and the records detectors keep across clients (a campaign's members), when they share them
        self.record_sharers: tuple[Any, ...] = ()
        if self.policy.shared_state and not in_memory:
            self.record_sharers = tuple(d for d in self.detectors if shares_records(d))
            if self.record_sharers:
                logger.info(
                    "distillguard: records across clients shared through the limit storage: %s",
                    tuple(d.name for d in self.record_sharers),
                )
        self.max_body_bytes = max_body_bytes
        self.on_internal_error = on_internal_error
        if on_decision is not None and not callable(on_decision):
            raise ConfigurationError("on_decision must be callable")
        self.on_decision = on_decision
        self.websockets = websockets
        self.websocket_token_protocol = websocket_token_protocol
        self.clock = clock or steady_time
        self.watermark = watermark if not self.policy.shadow else None
        self._exact = frozenset(p for p in exempt_paths if not p.endswith("/"))
        self._prefixes = tuple(p for p in exempt_paths if p.endswith("/"))
        self.exempt_preflight = exempt_preflight
        self.telemetry.observe(self)
        if in_memory:
            logger.info("distillguard: limits are counted in memory, per process")

    @staticmethod
    def _detectors(spec: Iterable[DetectorSpec] | Mapping[str, Mapping[str, Any]]) -> list[Any]:
        if isinstance(spec, Mapping):
            return load_detectors(spec)
        out: list[Any] = []
        names: list[str] = []
        for item in spec:
            if isinstance(item, str):
                names.append(item)
            else:
                out.append(validate_detector(item, getattr(item, "name", type(item).__name__)))
        out.extend(load_detectors(names))
        seen: set[str] = set()
        for det in out:
            if det.name in seen:
                raise ConfigurationError(f"two detectors are named {det.name!r}")
            seen.add(det.name)
        return out

    # -- used by the adapters ------------------------------------------------------------------

    def is_exempt(self, path: str) -> bool:
        """Whether ``path`` bypasses the guard."""
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def is_preflight(self, method: str, request_method: object) -> bool:
        """Whether a request is a CORS preflight that bypasses the guard (``request_method``
        is the ``Access-Control-Request-Method`` header, or ``None``)."""
        return self.exempt_preflight and method == "OPTIONS" and bool(request_method)

    def flow(self, request: GuardRequest) -> Flow:
        """The pipeline for ``request`` (see :func:`distillguard.flow.evaluate`)."""
        return admit(self, request, evaluate(self, request))

    def sync_performer(self) -> SyncPerformer:
        """A performer with a sync ``limits`` strategy, for WSGI.

        Raises:
            ConfigurationError: when an async detector is configured (it needs ASGI).
        """
        for det in self.detectors:
            if is_async_detector(det):
                raise ConfigurationError(f"detector {det.name!r} is async; it needs the ASGI middleware")
        return SyncPerformer(self._limiter())

    def _limiter(self) -> Limiter:
        """The guard's sync limiter (one per guard: its connection pool is thread-safe)."""
        with self._lock:
            if self._sync_limiter is None:
                self._sync_limiter = Limiter(self.plan.config, self.limiter_stats, self._counters)
            return self._sync_limiter

    def async_performer(self) -> AsyncPerformer:
        """A performer with an async ``limits`` strategy (``async+`` storage), for ASGI (one
        per middleware: its connections belong to the event loop that first uses them; its
        memory counters are the guard's)."""
        limiter = AsyncLimiter(self.plan.config, self.limiter_stats, self._counters)
        return AsyncPerformer(limiter, detector_timeout=self.policy.detector_timeout)

    def release(self, client_id: str, *, tenant: str | None = None) -> bool:
        """Release a client the risk policy holds (say, a false positive after review): its
        risk, penalty box and detector history are forgotten, and its next request is judged as
        a new client's. With a shared limit storage (and the default ``RiskPolicy(shared=True)``)
        the release reaches every replica: its shared box, level and detector state are
        cleared, and each replica forgets what it holds on the client at the client's next
        request there. Its limit windows are not touched. Blocking (one round trip); in an
        async app, ``await`` :meth:`arelease`.

        Args:
            client_id: the client's identity (the configured identity claim).
            tenant: its tenant, when the limits are kept per tenant (several issuers).

        Returns:
            Whether the release reaches every replica (``False``: this process only, as with
            ``memory://``, where each process holds its own, or ``RiskPolicy(shared=False)``).

        Raises:
            StateError: the shared storage did not take the release (this process forgot the
                client; call again).
        """
        identity = Identity(client_id=client_id, tenant=tenant)
        return self._released(identity, self._run_once(flow_release(self, identity)))

    async def arelease(self, client_id: str, *, tenant: str | None = None) -> bool:
        """:meth:`release`, awaiting the storage (on the running event loop's connections)."""
        identity = Identity(client_id=client_id, tenant=tenant)
        return self._released(identity, await self._arun_once(flow_release(self, identity)))

    def status(self, client_id: str, *, tenant: str | None = None) -> ClientStatus:
        """Where the risk policy stands on a client: whether it is in the penalty box and for
        how long, its level and risk, the detector that drove it, and its releases (from the
        shared storage when the risk state is shared: one round trip, nothing charged).

        Raises:
            ConfigurationError: the guard has no risk policy.
        """
        identity = Identity(client_id=client_id, tenant=tenant)
        return self._run_once(flow_status(self, identity, self.clock()))

    async def astatus(self, client_id: str, *, tenant: str | None = None) -> ClientStatus:
        """:meth:`status`, awaiting the storage (on the running event loop's connections)."""
        identity = Identity(client_id=client_id, tenant=tenant)
        return await self._arun_once(flow_status(self, identity, self.clock()))

    def usage(
        self,
        client_id: str,
        *,
        tier: str = "default",
        tenant: str | None = None,
        path: str | None = None,
        model: str | None = None,
        limits: str | None = None,
    ) -> tuple[WindowUsage, ...]:
        """How much of each of its limit windows a client has used: its tier's windows, its
        tenant's, and those of every rule that applies (request, token and spend budgets).
        Nothing is charged; on a shared storage the windows are those of every replica (one
        round trip where the storage allows).

        Args:
            client_id: the client's identity (the configured identity claim).
            tier: its tier (which windows it has).
            tenant: its tenant, when the limits are kept per tenant (several issuers).
            path: the rules of this route only (``None``: of every route).
            model: the model, for the rules that count each of their named models apart
                (``None``: those rules are left out).
            limits: its own windows, when its token or API key gives it some
                (:attr:`~distillguard.Identity.limits`).

        Raises:
            StateError: the limit storage did not answer.
        """
        identity = Identity(client_id=client_id, tier=tier, tenant=tenant, limits=limits)
        return self._run_once(flow_usage(self, identity, path, model, self.clock()))

    async def ausage(
        self,
        client_id: str,
        *,
        tier: str = "default",
        tenant: str | None = None,
        path: str | None = None,
        model: str | None = None,
        limits: str | None = None,
    ) -> tuple[WindowUsage, ...]:
        """:meth:`usage`, awaiting the storage (on the running event loop's connections)."""
        identity = Identity(client_id=client_id, tier=tier, tenant=tenant, limits=limits)
        return await self._arun_once(flow_usage(self, identity, path, model, self.clock()))

    def _run_once(self, flow: Generator[Any, object, _T]) -> _T:
        """Drive an operator's ``flow`` (no request) with the guard's sync limiter."""
        return drive(flow, SyncPerformer(self._limiter()))

    async def _arun_once(self, flow: Generator[Any, object, _T]) -> _T:
        """Drive an operator's ``flow`` with an async limiter of its own on the running event
        loop, closed afterwards."""
        performer = self.async_performer()
        try:
            return await adrive(flow, performer)
        finally:
            await performer.limiter.aclose()

    def _released(self, identity: Identity, shared: bool) -> bool:
        """Count and log a release (the client as the spans record it: hashed when so
        configured)."""
        self.telemetry.metrics.record_release("shared" if shared else "process")
        logger.warning(
            "distillguard: client %s released (%s)",
            self.telemetry.client_attribute(identity.client_id),
            "on every replica" if shared else "in this process",
        )
        return shared

    def decide(self, request: GuardRequest, perform: Callable[[Any], object]) -> Decision:
        """Run the pipeline synchronously; a failure of the guard itself follows policy."""
        try:
            return drive(self.flow(request), perform)
        except Exception as exc:
            return self._internal_error(exc, request)

    async def adecide(self, request: GuardRequest, perform: Callable[[Any], Any]) -> Decision:
        """Run the pipeline, awaiting each effect; a failure of the guard itself follows policy."""
        try:
            return await adrive(self.flow(request), perform)
        except Exception as exc:
            return self._internal_error(exc, request)

    def _internal_error(self, exc: Exception, request: GuardRequest) -> Decision:
        """The decision when the pipeline failed on ``request``: authentication still holds
        (identifying is pure CPU, and a verified token is cached), then ``on_internal_error``."""
        self._report(exc)
        errors = (f"guard:{type(exc).__name__}",)
        try:
            identity = identify(self, request)
        except Exception as again:
            self._report(again)
            return Decision(action=Action.UNAVAILABLE, problem=Problem.guard_error(), errors=errors)
        if isinstance(identity, Decision):  # no token, a bad one, or missing scopes
            return replace(identity, errors=(*identity.errors, *errors))
        if self.on_internal_error == "deny":
            return Decision(
                action=Action.UNAVAILABLE, identity=identity, problem=Problem.guard_error(), errors=errors
            )
        return Decision(action=Action.ALLOW, identity=identity, errors=errors)

    def _report(self, exc: Exception, what: str = "internal error while guarding a request") -> None:
        """Log an internal error (or ``what`` failed): its stack the first time it happens at a
        place, then a count at 10, 100, 1,000 and every 10,000 (a bug hit by every request must
        not flood the log). Never its message, which may quote the request."""
        frames = traceback.extract_tb(exc.__traceback__)
        place = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        key = (type(exc).__qualname__, place)
        with self._lock:
            seen = self._internal_errors.get(key, 0) + 1
            if seen > 1 or len(self._internal_errors) < 256:
                self._internal_errors[key] = seen
        if seen == 1:
            stack = "".join(traceback.format_list(frames))
            logger.error(
                "distillguard: %s: %s at %s (its message is not logged: it may quote the request)\n%s",
                what,
                key[0],
                place,
                stack,
            )
        elif seen in (10, 100, 1000) or seen % 10_000 == 0:
            logger.error("distillguard: %s: %s at %s, %d times so far", what, key[0], place, seen)

    def hook_failed(self, exc: Exception) -> None:
        """``on_decision`` raised: logged like an internal error; the request goes on."""
        self._report(exc, "the on_decision hook failed")

    def bad_body(self, code: str, detail: str) -> Decision:
        """The decision for a request body that cannot be taken as sent (400 ``code``)."""
        return Decision(action=Action.BAD_REQUEST, problem=Problem.bad_body(code, detail))

    def too_large(self) -> Decision:
        """The decision for a body over ``max_body_bytes``."""
        return Decision(action=Action.TOO_LARGE, problem=Problem.too_large(self.max_body_bytes))

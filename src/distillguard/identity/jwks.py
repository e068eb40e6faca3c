"""Verification keys from a JWKS endpoint, refreshed in the background.

:class:`JWKSKeys` is a :class:`~distillguard.identity.KeyResolver`. The request path only reads
an in-memory snapshot; one daemon thread does every fetch (so at most one is in flight), on a
schedule of about 0.8 x ``lifespan`` with jitter, sooner when a token names an unknown ``kid``
(at most once per ``cooldown``), and with exponential backoff after failures. When a refresh
fails the last good key set keeps working for up to ``max_stale``; before the first good fetch
(or after ``max_stale``) :meth:`JWKSKeys.key_for` raises :class:`KeysUnavailable`, which the
guard answers with 503 ``auth_unavailable`` and ``Retry-After`` rather than 401.

Example::

    keys = JWKSKeys("https://idp.example.com/.well-known/jwks.json", algorithms=["RS256"])
    keys.prefetch()  # at startup; optional, the first request starts the refresher otherwise
    guard = Guard(jwt=JWTConfig(algorithms=["RS256"], key_resolver=keys, issuer=..., audience=...))
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._version import __version__
from ..errors import AuthenticationError, ConfigurationError
from . import _jwkset
from ._jwkset import JWKSFetchError, KeySet
from ._refresher import Refresher
from .keys import algorithm_family

__all__ = ["JWKSKeys", "JWKSStatus", "KeysUnavailable"]

logger = logging.getLogger("distillguard.jwks")


class KeysUnavailable(AuthenticationError):
    """No usable key set yet (or the last good one is older than ``max_stale``).

    Raised by a :class:`~distillguard.identity.KeyResolver`; the guard answers 503
    ``auth_unavailable`` with ``Retry-After: retry_after`` instead of 401, because the token may
    well be valid.

    Attributes:
        retry_after: whole seconds until keys may be available again (at least 1).
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__("keys_unavailable")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, kw_only=True)
class JWKSStatus:
    """A snapshot of the resolver's health, for readiness probes and logs.

    Attributes:
        ready: whether tokens can be verified now.
        kids: the ``kid`` values currently served.
        age: seconds since the last good fetch (``None`` before the first).
        fetches: fetch attempts so far.
        failures: consecutive failed attempts (0 after a good fetch).
        last_error: the kind of the last failure (``timeout``, ``http_503``...), if any.
        generation: bumped each time a key is removed or replaced.
    """

    ready: bool
    kids: frozenset[str]
    age: float | None
    fetches: int
    failures: int
    last_error: str | None
    generation: int


@dataclass(frozen=True, slots=True)
class _Snapshot:
    keys: KeySet
    fetched_at: float


class JWKSKeys:
    """Keys from a JWKS URL, served from memory and refreshed by one background thread.

    Args:
        url: the JWKS URL: ``https://`` (``http://`` only for loopback hosts). Redirects are
            not followed.
        algorithms: the algorithms keys may serve (``None``: any asymmetric one the key type
            allows). A JWK with ``alg`` serves that algorithm only; an RSA JWK without ``alg``
            serves every RSA algorithm listed here, so pin one (e.g. ``["RS256"]``).
        lifespan: seconds a fetched set is considered fresh; refreshed at ~0.8 x lifespan.
        max_stale: how long (seconds since the last good fetch) the last good set keeps working
            while refreshes fail; after that tokens get 503 (fail closed).
        timeout: socket timeout of one fetch; a fetch is abandoned after about twice this.
        cooldown: minimum seconds between refreshes triggered by unknown ``kid`` values.
        max_unknown_kids: how many unknown ``kid`` values are remembered (negative cache).
        max_bytes: larger JWKS documents are refused.
        headers: extra request headers (e.g. an API key for a private endpoint).
        ssl_context: the TLS context (the system trust store by default).
        meter_provider: OpenTelemetry meter provider (the global one by default).

    Raises:
        ConfigurationError: for a non-https URL (``file://``, ``ftp://``...) or bad settings.
    """

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str] | None = None,
        lifespan: float = 300.0,
        max_stale: float = 12 * 3600.0,
        timeout: float = 3.0,
        cooldown: float = 30.0,
        max_unknown_kids: int = 1024,
        max_bytes: int = 512 * 1024,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        loopback = _jwkset.check_url(url)
        if algorithms is not None:
            algorithms = tuple(algorithms)
            if not algorithms or any(algorithm_family(a) == "oct" for a in algorithms):
                raise ConfigurationError("JWKSKeys.algorithms must list asymmetric algorithms only")
        if not (lifespan > 0 and max_stale >= lifespan):
            raise ConfigurationError("JWKSKeys needs lifespan > 0 and max_stale >= lifespan")
        if not 0 < timeout <= 30:
            raise ConfigurationError("JWKSKeys.timeout must be in (0, 30] seconds")
        if cooldown < 0 or max_unknown_kids < 1 or max_bytes < 1024:
            raise ConfigurationError("JWKSKeys needs cooldown >= 0, max_unknown_kids >= 1, max_bytes >= 1024")
        self.url = url
        self._host = urllib.parse.urlsplit(url).hostname or "?"
        self._algorithms = frozenset(algorithms) if algorithms is not None else None
        self._max_stale = max_stale
        self._timeout = timeout
        self._cooldown = cooldown
        self._max_unknown = max_unknown_kids
        self._max_bytes = max_bytes
        self._headers = {
            "Accept": "application/jwk-set+json, application/json",
            "User-Agent": f"distillguard/{__version__}",
            **(headers or {}),
        }
        self._opener = _jwkset.make_opener(loopback, ssl_context)
        self.generation = 0
        """Bumped when a key is removed or replaced; verifiers drop tokens cached before."""
        self.available_until = -math.inf
        """The :func:`time.monotonic` time after which :meth:`key_for` raises
        :class:`KeysUnavailable` (the last good fetch + ``max_stale``). Verifiers read it to
        refuse their cached tokens the same way, without a call per token."""
        self._snapshot: _Snapshot | None = None
        self._unknown_lock = threading.Lock()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._last_error: str | None = None
        self._refresher = Refresher(
            self._fetch_once, period=lifespan, cooldown=cooldown, name="distillguard-jwks"
        )
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("distillguard", __version__)
        self._fetch_counter = meter.create_counter(
            "distillguard.jwks.fetches", unit="{fetch}", description="JWKS fetch attempts by outcome"
        )
        ref = weakref.ref(self)
        meter.create_observable_gauge(
            "distillguard.jwks.age",
            callbacks=[lambda options: _observe_age(ref, options)],
            unit="s",
            description="Seconds since the last good JWKS fetch",
        )
        if hasattr(os, "register_at_fork"):  # POSIX
            os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    @classmethod
    def from_issuer(
        cls,
        issuer: str,
        *,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        **options: Any,
    ) -> JWKSKeys:
        """The keys of an OpenID Connect issuer, found through its discovery document
        (``{issuer}/.well-known/openid-configuration``, fetched once, now: blocking).

        The document must name the same ``issuer`` (OpenID Connect Discovery, section 4.3: a
        document served for another issuer is refused) and a ``jwks_uri`` that passes the same
        checks as a JWKS URL. ``options`` are :class:`JWKSKeys`'s.

        Raises:
            ConfigurationError: when the document cannot be fetched, is not JSON, names another
                issuer or no usable ``jwks_uri``.
        """
        loopback = _jwkset.check_url(issuer)
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        opener = _jwkset.make_opener(loopback, ssl_context)
        headers = {"Accept": "application/json", "User-Agent": f"distillguard/{__version__}"}
        try:
            raw = _jwkset.fetch(opener, url, timeout=timeout, max_bytes=256 * 1024, headers=headers)
            document = json.loads(raw)
        except JWKSFetchError as exc:
            raise ConfigurationError(
                f"the OpenID configuration of {issuer} cannot be fetched ({exc})"
            ) from None
        except ValueError:
            raise ConfigurationError(f"the OpenID configuration of {issuer} is not JSON") from None
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise ConfigurationError(f"the OpenID configuration at {url} is not the one of {issuer}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ConfigurationError(f"the OpenID configuration of {issuer} names no jwks_uri")
        return cls(jwks_uri, ssl_context=ssl_context, **options)

    # -- the request path (memory only) --------------------------------------------------------

    def key_for(self, kid: str | None, alg: str) -> Any | None:
        """Return the key for ``kid`` and ``alg`` from memory, or ``None`` (401).

        Never waits on the network: an unknown ``kid`` only asks the refresher for a new fetch
        (at most once per ``cooldown``).

        Raises:
            KeysUnavailable: before the first good fetch, or when the last good one is older
                than ``max_stale``.
        """
        refresher = self._refresher
        if not refresher.started:
            refresher.start()
        snapshot = self._snapshot
        now = time.monotonic()
        if snapshot is None or now > self.available_until:  # past max_stale: what verifiers read
            raise KeysUnavailable(refresher.retry_after(now))
        key = snapshot.keys.find(kid, alg)
        if key is None and not snapshot.keys.has_kid(kid):
            self._unknown_kid("" if kid is None else kid, now)
        return key

    def _unknown_kid(self, kid: str, now: float) -> None:
        with self._unknown_lock:
            seen = self._unknown.get(kid)
            if seen is not None and now - seen < self._cooldown:
                return
            self._unknown[kid] = now
            self._unknown.move_to_end(kid)
            if len(self._unknown) > self._max_unknown:
                self._unknown.popitem(last=False)
        self._refresher.poke(now)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> JWKSKeys:
        """Start the background refresher (non-blocking; the first fetch begins at once)."""
        self._refresher.start()
        return self

    def prefetch(self, timeout: float = 5.0) -> bool:
        """Start the refresher and wait up to ``timeout`` seconds for a key set.

        For startup (e.g. in an ASGI lifespan: ``await asyncio.to_thread(keys.prefetch)``).
        Returns whether keys are available; on ``False`` requests get 503 until a fetch works.
        """
        self._refresher.ensure(lambda: self._snapshot is not None, timeout)
        return self._snapshot is not None

    def refresh(self, wait: float | None = None) -> bool:
        """Ask for a fetch now, ignoring ``cooldown`` (still one fetch at a time).

        With ``wait``, block up to that many seconds for it and return whether it succeeded;
        without, return ``False`` at once.
        """
        return self._refresher.trigger(wait=wait)

    def close(self) -> None:
        """Stop the refresher; the current key set stays usable until it is ``max_stale``."""
        self._refresher.stop()

    def __enter__(self) -> JWKSKeys:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> JWKSStatus:
        """The current health (for a readiness probe: ``keys.status().ready``)."""
        snapshot = self._snapshot
        now = time.monotonic()
        age = None if snapshot is None else now - snapshot.fetched_at
        return JWKSStatus(
            ready=age is not None and age <= self._max_stale,
            kids=frozenset(snapshot.keys.by_kid) if snapshot is not None else frozenset(),
            age=age,
            fetches=self._refresher.attempts,
            failures=self._refresher.failures,
            last_error=self._last_error,
            generation=self.generation,
        )

    # -- on the refresher thread ---------------------------------------------------------------

    def _fetch_once(self) -> bool:
        keys: KeySet | None = None
        error: str | None = None
        try:
            raw = _jwkset.fetch(
                self._opener,
                self.url,
                timeout=self._timeout,
                max_bytes=self._max_bytes,
                headers=self._headers,
            )
            keys = _jwkset.parse(raw, self._algorithms)
        except JWKSFetchError as exc:
            error = exc.kind
        except Exception as exc:  # a bug must not kill the refresher
            error = type(exc).__name__
            logger.exception("distillguard: unexpected error refreshing JWKS from %s", self._host)
        now = time.monotonic()
        if keys is not None:
            self._install(keys, now)
        self._last_error = error
        self._fetch_counter.add(1, {"outcome": "ok" if error is None else error})
        if error is not None:
            snapshot = self._snapshot
            if snapshot is None:
                logger.warning("distillguard: JWKS fetch from %s failed (%s); no keys yet", self._host, error)
            else:
                logger.warning(
                    "distillguard: JWKS refresh from %s failed (%s); serving keys fetched %.0f s ago",
                    self._host,
                    error,
                    now - snapshot.fetched_at,
                )
        return keys is not None

    def _install(self, keys: KeySet, now: float) -> None:
        old = self._snapshot
        self._snapshot = _Snapshot(keys, now)
        self.available_until = now + self._max_stale
        # After the swap: a verifier that read the old generation re-checks it before caching.
        if old is not None and not old.keys.fingerprints <= keys.fingerprints:
            self.generation += 1
        if keys.refused and (old is None or old.keys.refused != keys.refused):
            for kid, reason in keys.refused:  # logged when first seen, not on every refresh
                logger.warning(
                    "distillguard: JWKS from %s: key %s ignored: %s",
                    self._host,
                    "without kid" if kid is None else f"kid={kid[:64]!r}",
                    reason,
                )
        with self._unknown_lock:
            self._unknown.clear()


def _observe_age(ref: weakref.ReferenceType[JWKSKeys], options: CallbackOptions) -> Iterator[Observation]:
    keys = ref()
    snapshot = keys._snapshot if keys is not None else None
    if keys is not None and snapshot is not None:
        yield Observation(time.monotonic() - snapshot.fetched_at, {"jwks.host": keys._host})


def _after_fork(ref: weakref.ReferenceType[JWKSKeys]) -> None:
    keys = ref()
    if keys is not None:  # threads and held locks do not survive fork: the child starts anew
        keys._unknown_lock = threading.Lock()
        keys._refresher.reset_after_fork()

"""``storage_options`` reach Redis under both adapters: credentials (``password``, ``username``)
and TLS settings (``ssl_ca_certs``) against real ``redis-server`` processes started with
``--requirepass`` and with TLS; wrong credentials follow the outage policy on both adapters."""

from __future__ import annotations

import datetime
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import redis
from distillguard import Guard, LimitConfig
from tests.helpers import jwt_config
from tests.limiting.apps import Harness
from tests.servers import REDIS_SERVER, free_port, require_redis

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

PASSWORD = "s3cret-pw"
KEY = "dg:LIMITER/c/default/client-1/3/1/minute"


class SecuredRedis:
    """A ``redis-server`` that wants a password, on plain TCP or on TLS only."""

    def __init__(self, tls: Path | None = None) -> None:
        self.port = free_port()
        self.tls = tls
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--requirepass", PASSWORD]
        if tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key")]
            args += ["--tls-ca-cert-file", str(tls / "ca.pem")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.admin().ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the secured redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        """A client that authenticates (and trusts the test CA)."""
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.tls / "ca.pem")} if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=2, **tls)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def write_certificates(folder: Path) -> Path:
    """A test CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.pem": certificate("test-ca", ca_key, "test-ca", ca_key, True),
        "server.pem": certificate("127.0.0.1", server_key, "test-ca", ca_key, False),
    }
    for name, cert in files.items():
        (folder / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return folder


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredRedis]:
    """A password-protected redis-server on plain TCP."""
    require_redis()
    server = SecuredRedis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secured_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """A password-protected redis-server that speaks TLS only, with a certificate of a test CA."""
    require_redis()
    server = SecuredRedis(tls=write_certificates(tmp_path_factory.mktemp("tls")))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def flushed(request: pytest.FixtureRequest) -> None:
    """Each test starts with empty servers (those the test uses)."""
    for name in ("secured", "secured_tls"):
        if name in request.fixturenames:
            request.getfixturevalue(name).admin().flushall()


def harness(kind: str, tracer_provider: Any, url: str, options: dict[str, Any], **limits: Any) -> Harness:
    config = LimitConfig(default="3/minute", storage_uri=url, storage_options=options, **limits)
    return Harness(kind, Guard(jwt=jwt_config(), limits=config, tracer_provider=tracer_provider))


def counted_on_redis(h: Harness, server: SecuredRedis) -> None:
    """Four requests: three admitted and one refused, all counted on the server."""
    assert [h.call()[0] for _ in range(4)] == [200, 200, 200, 429]
    stats = h.guard.limiter_stats.snapshot()
    assert stats["storage_errors"] == 0 and stats["local_fallback"] == 0
    assert server.admin().llen(KEY) == 3


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_password_in_storage_options_reaches_redis(
    secured: SecuredRedis, tracer_provider: Any, kind: str
) -> None:
    """The password given in ``storage_options`` (not in the URI) authenticates both adapters:
    the windows are counted on Redis, no request takes the outage path."""
    counted_on_redis(harness(kind, tracer_provider, secured.url, {"password": PASSWORD}), secured)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_acl_username_and_password_in_storage_options(
    secured: SecuredRedis, tracer_provider: Any, kind: str
) -> None:
    """An ACL user (``username`` and ``password`` in ``storage_options``) works on both."""
    secured.admin().acl_setuser(
        "limiter", enabled=True, passwords=["+limiter-pw"], keys=["dg:*"], commands=["+@all"]
    )
    options = {"username": "limiter", "password": "limiter-pw"}
    counted_on_redis(harness(kind, tracer_provider, secured.url, options), secured)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_pool_settings_are_accepted_by_both_adapters(
    secured: SecuredRedis, tracer_provider: Any, kind: str
) -> None:
    """``max_connections`` and ``pool_timeout`` size the ASGI pool; the WSGI client, which has
    no pool to wait on, ignores ``pool_timeout`` instead of failing every connection with it."""
    options = {"password": PASSWORD, "max_connections": 8, "pool_timeout": 2.0}
    h = harness(kind, tracer_provider, secured.url, options)
    counted_on_redis(h, secured)
    if kind == "asgi":
        pool = h.limiter.storage.bridge.storage.connection_pool
        assert (pool.max_connections, pool.timeout) == (8, 2.0)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("outage", "statuses"),
    [("local_fallback", [200, 200, 200, 429]), ("fail_closed", [503, 503, 503, 503])],
)
def test_wrong_password_follows_the_outage_policy(
    secured: SecuredRedis, tracer_provider: Any, kind: str, outage: str, statuses: list[int]
) -> None:
    """A wrong password is a storage failure on both adapters: the outage policy decides, the
    failure is counted, and nothing reaches Redis."""
    h = harness(kind, tracer_provider, secured.url, {"password": "wrong"}, outage=outage)
    assert [h.call()[0] for _ in range(4)] == statuses
    stats = h.guard.limiter_stats.snapshot()
    assert stats["storage_errors"] >= 1
    assert stats["local_fallback" if outage == "local_fallback" else "fail_closed"] == 4
    assert secured.admin().dbsize() == 0


@pytest.mark.parametrize(
    ("url_password", "option_password", "counted"),
    [(PASSWORD, "wrong", True), ("wrong", PASSWORD, False)],
)
def test_uri_and_options_conflict_resolves_the_same_on_both_adapters(
    secured: SecuredRedis, tracer_provider: Any, url_password: str, option_password: str, counted: bool
) -> None:
    """A password both in the URI and in ``storage_options``: the URI's wins (redis-py's
    ``from_url`` rule), under ASGI as under WSGI."""
    url = secured.url.replace("redis://", f"redis://:{url_password}@")
    for kind in ("asgi", "wsgi"):
        secured.admin().flushall()
        h = harness(kind, tracer_provider, url, {"password": option_password})
        h.call()
        assert (h.guard.limiter_stats.storage_errors == 0) is counted, kind
        assert secured.admin().llen(KEY) == (1 if counted else 0), kind


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_tls_options_reach_redis(secured_tls: SecuredRedis, tracer_provider: Any, kind: str) -> None:
    """``rediss://`` with ``ssl_ca_certs`` (the test CA) and the password in ``storage_options``:
    both adapters verify the server's certificate and count on it."""
    options = {"password": PASSWORD, "ssl_ca_certs": str(secured_tls.tls / "ca.pem")}  # type: ignore[operator]
    counted_on_redis(harness(kind, tracer_provider, secured_tls.url, options), secured_tls)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_tls_without_the_ca_follows_the_outage_policy(
    secured_tls: SecuredRedis, tracer_provider: Any, kind: str
) -> None:
    """Without ``ssl_ca_certs`` the certificate of the test CA is not trusted: the handshake
    fails and both adapters fall back (so the option above is what made it work)."""
    h = harness(kind, tracer_provider, secured_tls.url, {"password": PASSWORD})
    assert [h.call()[0] for _ in range(4)] == [200, 200, 200, 429]
    stats = h.guard.limiter_stats.snapshot()
    assert stats["storage_errors"] >= 1 and stats["local_fallback"] == 4
    assert secured_tls.admin().dbsize() == 0

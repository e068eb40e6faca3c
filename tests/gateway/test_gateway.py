"""The guarded gateway over real HTTP: a model server (uvicorn) behind the gateway (uvicorn),
called with httpx and the official ``openai`` client. Requests reach the model server byte for
byte with end-to-end headers only; answers come back chunk by chunk; the guard reads their
token usage; refusals never reach the model server; an unreachable, slow or failing model
server gives a problem+json answer or an aborted response, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.mock_llm import chat_chunks, chat_completion, sse_events

from distillguard import ConfigurationError, Guard, LimitConfig
from distillguard.gateway import Gateway, _end_to_end, gateway_app
from distillguard.settings import DEV_AUDIENCE, DEV_ISSUER, DEV_SECRET
from distillguard.telemetry import SPAN_NAME
from tests.helpers import jwt_config, make_token, read_body
from tests.servers import RedisServer, free_port, require_redis, serve_in_thread, wait_until_serving

pytestmark = pytest.mark.timeout(60)

CHAT = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Tell me about rivers, \u00e9t\u00e9."}]},
    separators=(", ", ": "),
).encode()


PROSE = "Rivers often carry large amounts of sediment; perhaps the most crucial example is the Nile."
COMMAND = [sys.executable, "-c", "from distillguard.cli import main; raise SystemExit(main())", "gateway"]


class ModelServer:
    """A stand-in model server that records what it receives: OpenAI-style chat answers (JSON,
    or SSE with a pause between events), an error, a slow route and one that breaks mid-answer."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.left_at: float | None = None  # when a client of ``/endless`` went away

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await read_body(receive)
        path = scope["path"]
        self.seen.append(
            {
                "method": scope["method"],
                "path": path,
                "query": scope["query_string"],
                "raw_path": scope.get("raw_path"),
                "peer": tuple(scope["client"]) if scope.get("client") else None,
                "headers": [(k.decode(), v.decode()) for k, v in scope["headers"]],
                "body": body,
            }
        )
        if path == "/health":
            await _json(send, 200, {"status": "ok"})
            return
        if path == "/endless":  # events until the client leaves
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )

            async def events() -> None:
                while True:
                    await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
                    await asyncio.sleep(0.05)

            task = asyncio.ensure_future(events())
            while (await receive())["type"] != "http.disconnect":
                pass
            task.cancel()
            self.left_at = time.monotonic()
            return
        if path == "/slow":
            await asyncio.sleep(3)
        if path == "/broken":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
            )
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            raise RuntimeError("the model server fails mid-answer")
        if path == "/v1/prose":
            await _json(
                send, 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": PROSE}}]}
            )
            return
        if path == "/v1/bad":
            await _json(send, 400, {"error": {"message": "bad model", "type": "invalid_request_error"}})
            return
        doc = json.loads(body)
        if doc.get("stream") is True:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"x-upstream", b"yes")],
                }
            )
            for event in sse_events(chat_chunks(doc)):
                await send({"type": "http.response.body", "body": event, "more_body": True})
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await _json(send, 200, chat_completion(doc), [(b"x-upstream", b"yes")])


async def _json(send: Any, status: int, doc: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def model() -> Iterator[tuple[ModelServer, str]]:
    server = ModelServer()
    with serve_in_thread(server) as url:
        yield server, url


def serve_gateway(upstream: str, tracer_provider: Any = None, **options: Any) -> Any:
    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="100/minute"), tracer_provider=tracer_provider)
    return serve_in_thread(gateway_app(upstream, guard=guard, **options), lifespan="on")


def test_a_request_reaches_the_model_server_as_sent_and_its_answer_comes_back(
    model: tuple[ModelServer, str],
) -> None:
    """Method, path, query and body arrive unchanged; the guard's bearer token, hop-by-hop
    headers and the client's Accept-Encoding do not; the upstream's key and X-Forwarded-*
    are added; the answer (status, body, the upstream's headers) comes back, with the guard's
    RateLimit fields."""
    server, upstream = model
    token = make_token(sub="alice")
    with serve_gateway(upstream, upstream_headers={"authorization": "Bearer upstream-key"}) as url:
        response = httpx.post(
            f"{url}/v1/chat/completions?api-version=2",
            content=CHAT,
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/json",
                "x-request-id": "r-1",
                "connection": "keep-alive, x-hop",
                "x-hop": "private",
                "accept-encoding": "gzip",
            },
        )
    assert response.status_code == 200
    assert response.json() == chat_completion(json.loads(CHAT)) | {"created": response.json()["created"]}
    assert response.headers["x-upstream"] == "yes"
    assert response.headers["ratelimit"].startswith('"100-per-1-minute";r=99')
    (seen,) = server.seen
    headers = dict(seen["headers"])
    assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
        "POST",
        "/v1/chat/completions",
        b"api-version=2",
        CHAT,
    )
    assert headers["authorization"] == "Bearer upstream-key"
    assert token not in json.dumps(seen["headers"])
    assert headers["x-request-id"] == "r-1"
    assert "x-hop" not in headers and headers.get("connection", "") != "keep-alive, x-hop"
    assert headers["accept-encoding"] == "identity"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == url.removeprefix("http://")
    assert headers["content-length"] == str(len(CHAT))


def test_the_bearer_token_is_forwarded_only_when_asked(model: tuple[ModelServer, str]) -> None:
    server, upstream = model
    token = make_token()
    with serve_gateway(upstream, forward_authorization=True) as url:
        assert (
            httpx.post(
                f"{url}/v1/chat/completions", content=CHAT, headers={"authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    assert dict(server.seen[0]["headers"])["authorization"] == f"Bearer {token}"


def test_a_streamed_answer_arrives_chunk_by_chunk_and_its_usage_is_read(
    model: tuple[ModelServer, str], tracer_provider: Any, span_exporter: Any
) -> None:
    """Server-sent events reach the client as the model server sends them (the first long
    before the last), byte for byte; the guard counts the answer's tokens from its usage."""
    _, upstream = model
    body = json.loads(CHAT) | {"stream": True, "stream_options": {"include_usage": True}}
    expected = b"".join(sse_events(chat_chunks(body)))
    with serve_gateway(upstream, tracer_provider) as url:
        started = time.monotonic()
        arrivals = []
        received = b""
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {make_token()}"},
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for chunk in response.iter_raw():
                arrivals.append(time.monotonic() - started)
                received += chunk
    events = expected.count(b"\n\n")
    assert len(arrivals) >= events // 2  # not buffered into one piece
    assert arrivals[-1] - arrivals[0] >= 0.05 * (events - 2)
    assert _strip_created(received) == _strip_created(expected)
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == SPAN_NAME]
    usage = body_usage(expected)
    assert span.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert span.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]


def _strip_created(data: bytes) -> bytes:
    """SSE frames with their ``created`` time zeroed (the model server stamps its own)."""
    out = []
    for frame in data.split(b"\n\n"):
        if frame.startswith(b"data: {"):
            doc = json.loads(frame[6:])
            doc["created"] = 0
            frame = b"data: " + json.dumps(doc).encode()
        out.append(frame)
    return b"\n\n".join(out)


def body_usage(sse: bytes) -> dict[str, int]:
    for frame in sse.split(b"\n\n"):
        if frame.startswith(b"data: {") and b'"usage":{' in frame:
            usage: dict[str, int] = json.loads(frame[6:])["usage"]
            return usage
    raise AssertionError("no usage frame")


def test_refused_requests_never_reach_the_model_server(model: tuple[ModelServer, str]) -> None:
    server, upstream = model
    with serve_gateway(upstream) as url:
        missing = httpx.post(f"{url}/v1/chat/completions", content=CHAT)
        forged = httpx.post(
            f"{url}/v1/chat/completions", content=CHAT, headers={"authorization": "Bearer a.b.c"}
        )
    assert (missing.status_code, forged.status_code) == (401, 401)
    assert missing.headers["content-type"] == "application/problem+json"
    assert server.seen == []


def test_an_unreachable_model_server_gives_502(tracer_provider: Any, span_exporter: Any) -> None:
    """A 502 problem at once, naming the request's trace (the guard's span) as a refusal does."""
    with serve_gateway(f"http://127.0.0.1:{free_port()}", tracer_provider) as url:
        started = time.monotonic()
        response = httpx.post(
            f"{url}/v1/chat/completions", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        )
    assert time.monotonic() - started < 5
    assert response.status_code == 502 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "upstream_unavailable"
    assert "retry-after" not in response.headers
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == SPAN_NAME]
    assert response.headers["x-request-id"] == f"{span.context.trace_id:032x}"
    with serve_gateway(f"http://127.0.0.1:{free_port()}", tracer_provider, request_id_header=None) as url:
        quiet = httpx.post(
            f"{url}/v1/chat/completions", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        )
    assert quiet.status_code == 502 and "x-request-id" not in quiet.headers


def test_a_slow_model_server_gives_504(model: tuple[ModelServer, str]) -> None:
    _, upstream = model
    with serve_gateway(upstream, timeout=0.5) as url:
        started = time.monotonic()
        response = httpx.post(
            f"{url}/slow", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        )
    assert response.status_code == 504 and response.json()["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.5


def test_a_slow_answer_is_awaited_past_the_connect_timeout(model: tuple[ModelServer, str]) -> None:
    """The wait for an answer is not the wait for a connection: a model server that takes 3 s
    before its first byte (a non-streamed answer being generated) is awaited under a 0.5 s
    connect timeout, and the defaults wait 600 s for it."""
    _, upstream = model
    assert (Gateway(upstream).timeout, Gateway(upstream).connect_timeout) == (600.0, 10.0)
    with serve_gateway(upstream, connect_timeout=0.5, timeout=10) as url:
        response = httpx.post(
            f"{url}/slow", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}, timeout=30
        )
    assert response.status_code == 200, response.text


def test_the_model_servers_own_errors_pass_through(model: tuple[ModelServer, str]) -> None:
    _, upstream = model
    with serve_gateway(upstream) as url:
        response = httpx.post(
            f"{url}/v1/bad", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        )
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "bad model", "type": "invalid_request_error"}}


def test_a_failure_mid_answer_aborts_the_response(model: tuple[ModelServer, str]) -> None:
    """The client never gets a truncated answer passed off as complete."""
    _, upstream = model
    with serve_gateway(upstream) as url, pytest.raises(httpx.HTTPError):
        httpx.post(f"{url}/broken", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}).read()


def test_a_client_that_leaves_closes_the_upstream_request(model: tuple[ModelServer, str]) -> None:
    """A client that stops reading an endless stream and closes its connection: the gateway
    closes its request to the model server, which sees the disconnect at once."""
    server, upstream = model
    with serve_gateway(upstream) as url:
        with httpx.stream(
            "POST", f"{url}/endless", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        ) as response:
            chunks = response.iter_raw()
            next(chunks), next(chunks)
        left = time.monotonic()
        deadline = left + 5
        while server.left_at is None:
            assert time.monotonic() < deadline, "the model server kept streaming"
            time.sleep(0.02)
    assert server.left_at - left < 2


def test_a_boxed_clients_stream_ends_and_the_model_server_stops(model: tuple[ModelServer, str]) -> None:
    """An endless stream through the gateway: once another request of its client is blocked
    (the penalty box), the stream ends with the ``error`` event while the client is still
    reading, and the gateway closes its request to the model server, which sees the
    disconnect."""
    from distillguard import Policy
    from distillguard.risk import RiskPolicy
    from tests.helpers import Dial

    server, upstream = model
    dial = Dial()
    policy = Policy(risk=RiskPolicy(penalty_seconds=60), stream_recheck=0.02)
    guard = Guard(jwt=jwt_config(), detectors=[dial], policy=policy)
    headers = {"authorization": f"Bearer {make_token(sub='thief')}"}
    with serve_in_thread(gateway_app(upstream, guard=guard), lifespan="on") as url:
        with httpx.stream("POST", f"{url}/endless", content=CHAT, headers=headers) as response:
            chunks = response.iter_raw()
            next(chunks), next(chunks)
            dial.value = 1.0
            assert httpx.post(f"{url}/v1/chat/completions", content=CHAT, headers=headers).status_code == 429
            rest = b"".join(chunks)  # the answer ends: the client is not the one that leaves
        last = json.loads(rest.rstrip(b"\n").rsplit(b"\n\n", 1)[-1][len(b"data: ") :])
        assert last["error"]["code"] == "suspicious_usage"
        deadline = time.monotonic() + 5
        while server.left_at is None:
            assert time.monotonic() < deadline, "the model server kept streaming"
            time.sleep(0.02)


def test_the_body_cap_holds_on_exempt_paths(model: tuple[ModelServer, str]) -> None:
    """Exempt paths skip the guard, not the gateway's own cap on what it forwards."""
    server, upstream = model
    with serve_gateway(upstream, max_body_bytes=1000) as url:
        response = httpx.post(f"{url}/health", content=b"x" * 5000)
        small = httpx.post(f"{url}/health", content=b"{}")
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"
    assert small.status_code != 413 and [s["path"] for s in server.seen] == ["/health"]


def test_a_body_the_guard_admits_is_forwarded_whatever_its_size(model: tuple[ModelServer, str]) -> None:
    """The gateway's cap follows the guard's: with the guard's cap raised to 4 MiB (long
    prompts), a 2 MiB prompt reaches the model server intact, and a 5 MiB one gets 413."""
    server, upstream = model
    guard = Guard(jwt=jwt_config(), limits=LimitConfig(default="100/minute"), max_body_bytes=4 << 20)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
    auth = {"authorization": f"Bearer {make_token()}", "content-type": "application/json"}
    with serve_in_thread(gateway_app(upstream, guard=guard), lifespan="on") as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=body, headers=auth, timeout=30)
        too_large = httpx.post(
            f"{url}/v1/chat/completions", content=b"x" * (5 << 20), headers=auth, timeout=30
        )
    assert response.status_code == 200, response.text
    assert server.seen[-1]["body"] == body
    assert dict(server.seen[-1]["headers"])["content-length"] == str(len(body))  # not chunked
    assert too_large.status_code == 413 and too_large.json()["max-bytes"] == 4 << 20


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (PEM files in ``directory``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_an_https_model_server_with_a_private_ca(tmp_path: Path) -> None:
    """An ``https://`` model server whose certificate a private CA signed: with that CA
    (``--upstream-ca``, ``Gateway(verify=path)``) requests go through; with the system's CAs
    the gateway refuses to talk to it (502, nothing sent); a CA file that cannot be loaded
    fails at construction."""
    key_file, cert_file = _self_signed(tmp_path)
    server = ModelServer()
    auth = {"authorization": f"Bearer {make_token()}"}
    with serve_in_thread(server, ssl_keyfile=str(key_file), ssl_certfile=str(cert_file)) as plain:
        upstream = plain.replace("http://", "https://")
        with serve_gateway(upstream, verify=str(cert_file)) as url:
            trusted = httpx.post(f"{url}/v1/chat/completions", content=CHAT, headers=auth)
        with serve_gateway(upstream) as url:
            untrusted = httpx.post(f"{url}/v1/chat/completions", content=CHAT, headers=auth)
    assert trusted.status_code == 200, trusted.text
    assert untrusted.status_code == 502 and untrusted.json()["code"] == "upstream_unavailable"
    assert len(server.seen) == 1
    with pytest.raises(ConfigurationError, match="cannot load the upstream CA bundle"):
        Gateway(upstream, verify=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="cannot load the upstream CA bundle"):
        Gateway(upstream, verify=str(key_file))  # not a certificate


def test_an_expect_continue_request_reaches_a_server_that_never_sends_100() -> None:
    """A client's ``Expect: 100-continue`` (curl sends it for large bodies) is met by the
    gateway's own server and not sent on: a model server that never sends ``100 Continue`` and
    waits for the body (as many do) answers at once instead of the request stalling."""
    import socket
    import threading

    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:  # HTTP/1.1 by hand: no 100 Continue, ever
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            heads.append(head.lower())
            length = int(
                next(h for h in head.lower().split(b"\r\n") if h.startswith(b"content-length")).split(b":")[1]
            )
            while len(body) < length:
                body += conn.recv(65536)
            answer = b'{"ok": true}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                % (len(answer), answer)
            )

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    upstream = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with serve_gateway(upstream, timeout=3) as url:
            started = time.monotonic()
            response = httpx.post(
                f"{url}/v1/chat/completions",
                content=CHAT,
                headers={"authorization": f"Bearer {make_token()}", "expect": "100-continue"},
            )
        assert response.status_code == 200 and response.json() == {"ok": True}
        assert time.monotonic() - started < 2
        assert b"expect:" not in heads[0]
    finally:
        thread.join(5)
        listener.close()


def test_the_openai_client_works_through_the_gateway(model: tuple[ModelServer, str]) -> None:
    import openai

    _, upstream = model
    with serve_gateway(upstream) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=make_token(), max_retries=0)
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == answer.choices[0].message.content
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-token", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])


def test_bad_settings_fail_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    for upstream in ("ftp://model", "model:8000", "http://"):
        with pytest.raises(ConfigurationError):
            Gateway(upstream)
    with pytest.raises(ConfigurationError):
        Gateway("http://model", upstream_headers={"host": "elsewhere"})
    with pytest.raises(ConfigurationError):
        Gateway("http://model", timeout=0)
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        Gateway("http://model", connect_timeout=3601)
    with pytest.raises(ConfigurationError, match="request_id_header"):
        Gateway("http://model", request_id_header="X-Request-Id")
    monkeypatch.delenv("DISTILLGUARD_UPSTREAM", raising=False)
    with pytest.raises(ConfigurationError):
        gateway_app(guard=Guard(jwt=jwt_config()))


def test_hop_by_hop_headers_are_dropped_both_ways() -> None:
    headers = [
        (b"Connection", b"close, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Content-Type", b"application/json"),
    ]
    assert _end_to_end(headers, frozenset()) == [(b"content-type", b"application/json")]


@contextlib.contextmanager
def gateway_command(
    upstream: str, *options: str, logs: list[str] | None = None, **variables: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``distillguard gateway`` in a process on the development settings, with ``variables``
    (``DISTILLGUARD_`` names without the prefix, and ``OTEL_`` names) and ``options``; yields
    its port and process once it serves, and stops it (SIGTERM: a graceful shutdown) on exit,
    then adds what it logged to ``logs``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLGUARD_", "OTEL_"))}
    settings = {"UPSTREAM": upstream, **{k: v for k, v in variables.items() if not k.startswith("OTEL_")}}
    env.update({f"DISTILLGUARD_{name}": value for name, value in settings.items()})
    env.update({name: value for name, value in variables.items() if name.startswith("OTEL_")})
    process = subprocess.Popen(
        [*COMMAND, "--port", str(port), *options],
        env=env,
        # uvicorn's access log goes to stdout: one stream of both when the logs are wanted
        stdout=subprocess.DEVNULL if logs is None else subprocess.PIPE,
        stderr=subprocess.PIPE if logs is None else subprocess.STDOUT,
    )
    try:
        wait_until_serving(port, process, timeout=30)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=10)
        if logs is not None and process.stdout is not None:
            logs.append(process.stdout.read().decode("utf-8", "replace"))
            process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()


DEV_TOKEN_CLAIMS = {"key": DEV_SECRET.encode(), "iss": DEV_ISSUER, "aud": DEV_AUDIENCE}


def test_the_command_serves_the_gateway(model: tuple[ModelServer, str]) -> None:
    """``distillguard gateway`` on the development settings forwards a request with a token
    minted for them; behind a trusted proxy (``--forwarded-allow-ips``) the client address is
    the one the proxy saw."""
    server, upstream = model
    with gateway_command(
        upstream, "--forwarded-allow-ips", "127.0.0.1", UPSTREAM_AUTHORIZATION="Bearer k"
    ) as (port, _):
        token = make_token(**DEV_TOKEN_CLAIMS)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            content=CHAT,
            headers={"authorization": f"Bearer {token}", "x-forwarded-for": "203.0.113.9"},
        )
        assert response.status_code == 200, response.text
        seen = dict(server.seen[-1]["headers"])
        assert seen["authorization"] == "Bearer k"
        assert seen["x-forwarded-for"].split(", ")[-1] == "203.0.113.9"


def test_the_access_log_can_be_turned_off(model: tuple[ModelServer, str]) -> None:
    """uvicorn's line per request is on by default, and off with ``--no-access-log`` (the
    guard's own startup lines stay)."""
    _, upstream = model
    token = make_token(**DEV_TOKEN_CLAIMS)
    for options, expected in (((), True), (("--no-access-log",), False)):
        logs: list[str] = []
        with gateway_command(upstream, *options, logs=logs, DETECTORS="") as (port, _):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            assert (
                httpx.post(url, content=CHAT, headers={"authorization": f"Bearer {token}"}).status_code == 200
            )
        assert ('"POST /v1/chat/completions HTTP/1.1" 200' in logs[0]) is expected, logs[0]
        assert "distillguard" in logs[0]


def test_the_command_holds_a_spend_limit_set_by_environment(model: tuple[ModelServer, str]) -> None:
    """``distillguard gateway`` with a cost budget in ``DISTILLGUARD_RULES``: each answer is
    charged what its usage cost at the model's price (the next request's remaining quota
    drops by exactly that), and a request whose estimate does not fit is refused with 429
    before it reaches the model server."""
    server, upstream = model
    prices = {"*": {"input": 1000, "output": 2000}}
    rules = [{"name": "spend", "limits": "1/minute", "unit": "cost", "prices": prices}]
    with gateway_command(upstream, RULES=json.dumps(rules)) as (port, _):
        token = make_token(**DEV_TOKEN_CLAIMS)

        def ask(max_tokens: int) -> httpx.Response:
            body = {"model": "m", "messages": [{"role": "user", "content": "Tell me about rivers."}]}
            return httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={**body, "max_tokens": max_tokens},
                headers={"authorization": f"Bearer {token}"},
            )

        def remaining(response: httpx.Response) -> int:
            policy = response.headers["ratelimit-policy"]
            assert '"spend-1-per-1-minute";q=1000000;w=60;distillguard-unit="cost-micros"' in policy
            state = next(s for s in response.headers["ratelimit"].split(", ") if s.startswith('"spend-'))
            return int(state.split(";r=")[1].split(";")[0])

        first = ask(50)
        assert first.status_code == 200, first.text
        usage = first.json()["usage"]
        cost = usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000
        second = ask(50)  # the same estimate charged, on top of what the first answer cost
        assert second.status_code == 200
        assert remaining(second) == remaining(first) - cost
        forwarded = len(server.seen)
        refused = ask(1000)  # an estimate of 2,000,000 micros and more: over the budget
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert "spend-1-per-1-minute" in refused.json()["violated-policies"]
        assert len(server.seen) == forwarded


@pytest.mark.slow
def test_the_command_exports_to_an_otlp_collector(model: tuple[ModelServer, str]) -> None:
    """``distillguard gateway`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set exports its spans and
    metrics to a real OTLP/HTTP receiver, and sends the last batch when it stops."""
    from opentelemetry.test._otlp_test_server import OtlpProtoTestServer

    _, upstream = model
    with OtlpProtoTestServer() as receiver:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_SERVICE_NAME": "gateway-e2e",
            "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # nothing before the shutdown's flush
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
        }
        with gateway_command(upstream, **otel) as (port, _):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            token = make_token(**DEV_TOKEN_CLAIMS)
            assert (
                httpx.post(url, content=CHAT, headers={"authorization": f"Bearer {token}"}).status_code == 200
            )
            assert httpx.post(url, content=CHAT).status_code == 401
            assert receiver.drain_spans() == []  # held in the batch until the shutdown
        spans = [r for r in receiver.drain_spans() if r.span.name == SPAN_NAME]
        recorded = receiver.drain_metrics()
    decisions = sorted(
        next(kv.value.string_value for kv in r.span.attributes if kv.key == "distillguard.decision")
        for r in spans
    )
    assert decisions == ["allow", "unauthenticated"]
    resource = {kv.key: kv.value.string_value for kv in spans[0].resource.attributes}
    assert resource["service.name"] == "gateway-e2e"
    assert len(resource["service.instance.id"]) == 36  # one per process: workers are told apart
    names = {r.metric.name for r in recorded if r.scope.name == "distillguard"}
    assert "distillguard.decisions" in names


def _connected_to(port: int) -> set[int]:
    """The processes holding an established TCP connection to 127.0.0.1:``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == "01":  # 01: established
            inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) in inodes:
                pids.add(int(fd.parts[2]))
    return pids


def _children(pid: int) -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(stat.parts[2]))
    return children


def test_the_command_trusts_the_upstream_ca_it_is_given(tmp_path: Path) -> None:
    """``distillguard gateway --upstream-ca FILE`` reaches an https model server of that CA."""
    key_file, cert_file = _self_signed(tmp_path)
    server = ModelServer()
    with serve_in_thread(server, ssl_keyfile=str(key_file), ssl_certfile=str(cert_file)) as plain:
        upstream = plain.replace("http://", "https://")
        with gateway_command(upstream, "--upstream-ca", str(cert_file)) as (port, _):
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                content=CHAT,
                headers={"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}"},
            )
    assert response.status_code == 200, response.text
    assert server.seen[-1]["body"] == CHAT


@pytest.mark.slow
def test_the_commands_connection_cap_makes_requests_wait(model: tuple[ModelServer, str]) -> None:
    """``--max-connections 1``: two requests to a model server taking 3 s each are both
    answered, the second once the first has given its connection back."""
    _, upstream = model
    with gateway_command(upstream, "--max-connections", "1") as (port, _):
        url = f"http://127.0.0.1:{port}/slow"
        auth = {"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}"}

        async def both() -> list[tuple[int, float]]:
            async with httpx.AsyncClient(timeout=30) as client:

                async def one() -> tuple[int, float]:
                    started = time.monotonic()
                    response = await client.post(url, content=CHAT, headers=auth)
                    return response.status_code, time.monotonic() - started

                return list(await asyncio.gather(one(), one()))

        results = sorted(asyncio.run(both()), key=lambda r: r[1])
    assert [status for status, _ in results] == [200, 200]
    assert results[0][1] < 5.5 <= results[1][1]  # 3 s, then 3 s more


@pytest.mark.redis
@pytest.mark.slow
def test_the_command_serves_in_several_workers_sharing_redis(model: tuple[ModelServer, str]) -> None:
    """``distillguard gateway --workers 2`` on Redis: two worker processes serve, both count on
    Redis, and a client spreading requests over them is admitted exactly its limit."""
    require_redis()
    redis = RedisServer(free_port())
    redis.start()
    try:
        _, upstream = model
        with gateway_command(
            upstream, "--workers", "2", STORAGE_URI=redis.url, LIMITS="10/minute", DETECTORS=""
        ) as (port, process):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth = {"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}"}
            statuses = []
            for _ in range(12):
                with httpx.Client() as client:  # a new connection each: either worker may take it
                    statuses.append(client.post(url, content=CHAT, headers=auth).status_code)
            assert statuses.count(200) == 10 and statuses.count(429) == 2
            workers = _children(process.pid)
            assert len(workers & _connected_to(redis.port)) == 2
    finally:
        redis.stop()


@pytest.mark.redis
@pytest.mark.slow
def test_the_workers_send_their_last_telemetry_when_stopped(model: tuple[ModelServer, str]) -> None:
    """``--workers 2`` with an OTLP endpoint and 60 s export intervals: when the command is
    stopped, the workers' batches reach the collector (all 16 requests' spans), each under a
    ``service.instance.id``. (Which worker takes a connection is the kernel's choice: the test
    does not assume both took some.)"""
    from opentelemetry.test._otlp_test_server import OtlpProtoTestServer

    require_redis()
    redis = RedisServer(free_port())
    redis.start()
    _, upstream = model
    try:
        with OtlpProtoTestServer() as receiver:
            otel = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing before the shutdown's flush
                "OTEL_METRIC_EXPORT_INTERVAL": "60000",
            }
            with gateway_command(upstream, "--workers", "2", STORAGE_URI=redis.url, DETECTORS="", **otel) as (
                port,
                _,
            ):
                auth = {"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}"}
                for _ in range(16):
                    with httpx.Client() as client:  # fresh connections
                        response = client.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions", content=CHAT, headers=auth
                        )
                        assert response.status_code == 200
            spans = [r for r in receiver.drain_spans() if r.span.name == SPAN_NAME]
    finally:
        redis.stop()
    assert len(spans) == 16
    instances = {
        next(kv.value.string_value for kv in r.resource.attributes if kv.key == "service.instance.id")
        for r in spans
    }
    assert 1 <= len(instances) <= 2 and all(instances)  # one per worker that took a request


def test_several_workers_on_memory_storage_are_refused() -> None:
    """``--workers 2`` without a shared storage stops at once (status 2): each worker would
    count its own limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env["DISTILLGUARD_UPSTREAM"] = "http://127.0.0.1:9"
    done = subprocess.run([*COMMAND, "--workers", "2"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "several workers need a shared DISTILLGUARD_STORAGE_URI" in done.stderr


def test_the_command_records_a_request_log_to_replay(model: tuple[ModelServer, str], tmp_path: Path) -> None:
    """``DISTILLGUARD_REQUEST_LOG`` on the gateway: every request it forwarded is in the file
    once the command is stopped (SIGTERM: the queued lines are written at exit), with the body
    as the client sent it, behind a trusted proxy with the client's address, and ready for
    ``distillguard replay``."""
    _, upstream = model
    with gateway_command(
        upstream,
        "--forwarded-allow-ips",
        "127.0.0.1",
        DETECTORS="",
        REQUEST_LOG=str(tmp_path / "r-{pid}.jsonl"),
    ) as (port, process):
        auth = {"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}", "x-forwarded-for": "203.0.113.9"}
        for _ in range(3):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=CHAT, headers=auth)
            assert response.status_code == 200
        pid = process.pid
    text = (tmp_path / f"r-{pid}.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert all(x["body"] == json.loads(CHAT) and x["ip"] == "203.0.113.9" for x in lines)
    assert all(x["decision"] == "allow" and x["client"] == "client-1" for x in lines)
    from distillguard.replay import LogStats, read_log

    stats = LogStats()
    assert len(list(read_log(text.splitlines(), stats))) == 3 and stats.malformed.count == 0


def test_the_command_answers_in_openai_error_shape() -> None:
    """``DISTILLGUARD_ERROR_FORMAT=openai``: the guard's 401 and the gateway's own 502 (a model
    server that does not answer) come as OpenAI's error object, with their stable codes."""
    with gateway_command(f"http://127.0.0.1:{free_port()}", ERROR_FORMAT="openai", DETECTORS="") as (port, _):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        refused = httpx.post(url, content=CHAT)
        assert refused.status_code == 401 and refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "missing_token"
        failed = httpx.post(
            url, content=CHAT, headers={"authorization": f"Bearer {make_token(**DEV_TOKEN_CLAIMS)}"}
        )
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_unavailable"
        assert failed.json()["error"]["type"] == "server_error"


def test_several_workers_need_a_request_log_each() -> None:
    """``--workers 2`` with one ``DISTILLGUARD_REQUEST_LOG`` file for all stops at once (status
    2): each worker must write its own (``{pid}`` in the name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    env.update(
        DISTILLGUARD_UPSTREAM="http://127.0.0.1:9",
        DISTILLGUARD_STORAGE_URI="redis://127.0.0.1:9",
        DISTILLGUARD_REQUEST_LOG="/tmp/requests.jsonl",
    )
    done = subprocess.run([*COMMAND, "--workers", "2"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "several workers need {pid} in DISTILLGUARD_REQUEST_LOG" in done.stderr


def test_the_command_refuses_a_missing_upstream() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISTILLGUARD_UPSTREAM"}
    done = subprocess.run(COMMAND, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "DISTILLGUARD_UPSTREAM" in done.stderr


def test_encoded_paths_and_queries_reach_the_model_server_unchanged(model: tuple[ModelServer, str]) -> None:
    """Percent-encoded slashes, spaces and UTF-8 in the path and the query are neither decoded
    nor encoded twice on the way (a classic proxy bug)."""
    server, upstream = model
    with serve_gateway(upstream) as url, httpx.Client() as client:
        request = client.build_request(
            "POST", f"{url}/v1/a%2Fb/c%20d/%C3%A9t%C3%A9?q=a%20b&x=%2F&y=%C3%A9", content=CHAT
        )
        request.headers["authorization"] = f"Bearer {make_token()}"
        assert client.send(request).status_code == 200
    (seen,) = server.seen
    assert seen["query"] == b"q=a%20b&x=%2F&y=%C3%A9"
    assert seen["path"] == "/v1/a/b/c d/\u00e9t\u00e9"  # the model server's ASGI view of it
    assert seen["raw_path"] == b"/v1/a%2Fb/c%20d/%C3%A9t%C3%A9"


def test_connections_are_reused_and_none_leak(model: tuple[ModelServer, str]) -> None:
    """Sequential answers reuse one pooled connection to the model server; streams that clients
    abandon close theirs: after 60 mixed requests the process holds no more sockets than
    before."""
    server, upstream = model
    token = make_token()
    headers = {"authorization": f"Bearer {token}"}
    streamed = json.loads(CHAT) | {"stream": True}
    with serve_gateway(upstream) as url, httpx.Client() as client:
        for _ in range(5):
            assert client.post(f"{url}/v1/chat/completions", content=CHAT, headers=headers).status_code == 200
        assert len({seen["peer"] for seen in server.seen}) == 1
        before = len(os.listdir("/proc/self/fd"))
        for i in range(60):
            if i % 2 == 0:  # abandoned after its first event
                with client.stream("POST", f"{url}/endless", content=CHAT, headers=headers) as response:
                    next(response.iter_raw())
            elif i % 15 == 1:  # streamed to its end (the model server paces its events)
                client.post(f"{url}/v1/chat/completions", json=streamed, headers=headers).read()
            else:
                client.post(f"{url}/v1/chat/completions", content=CHAT, headers=headers).read()
        time.sleep(0.5)
        assert len(os.listdir("/proc/self/fd")) <= before + 4


def test_the_gateway_marks_what_it_serves(model: tuple[ModelServer, str]) -> None:
    """With a watermark on the guard, the model server's answers reach the client marked."""
    from distillguard.watermark import Watermark

    _, upstream = model
    watermark = Watermark(b"a-secret-watermark-key-of-32-bytes")
    guard = Guard(jwt=jwt_config(), watermark=watermark)
    with serve_in_thread(gateway_app(upstream, guard=guard), lifespan="on") as url:
        response = httpx.post(
            f"{url}/v1/prose", content=CHAT, headers={"authorization": f"Bearer {make_token()}"}
        )
    content = response.json()["choices"][0]["message"]["content"]
    assert content == watermark.mark(PROSE) != PROSE

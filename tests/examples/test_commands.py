"""The documented commands start the examples: ``uvicorn examples.fastapi_app:app`` and
``flask --app examples.flask_app run``, on development defaults, answering a dev token."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from examples.make_token import mint_token
from examples.mock_llm import reply_tokens

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["-m", "uvicorn", "examples.fastapi_app:app", "--port", "{port}"], id="uvicorn"),
        pytest.param(["-m", "flask", "--app", "examples.flask_app", "run", "--port", "{port}"], id="flask"),
    ],
)
def test_documented_command_serves_with_dev_defaults(command: list[str], tmp_path: Path) -> None:
    """The command starts, logs the development warning, and serves a dev token through openai."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILLGUARD_")}
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, *(part.format(port=port) for part in command)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
            client = openai.OpenAI(
                base_url=base + "/v1", api_key=mint_token("alice", environ={}), max_retries=0
            )
            with client:
                reply = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}]
                )
                assert reply.choices[0].message.content == "".join(reply_tokens("hi", "m"))
                with pytest.raises(openai.AuthenticationError):
                    client.with_options(api_key="not-a-token").chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}]
                    )
        finally:
            process.terminate()
            process.wait(15)
    output = log.read_text()
    assert "DEVELOPMENT defaults in use" in output

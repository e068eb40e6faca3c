"""Client streams and request logs in the replay format."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DAY", "START", "Client", "Stream", "chat_body", "write_log"]

START = 1_767_571_200.0  # 2026-01-05 00:00 UTC, a Monday
DAY = 86_400.0

AGENTS = (
    "OpenAI/Python 1.51.0",
    "OpenAI/Python 1.40.6",
    "OpenAI/JS 4.67.1",
    "AsyncOpenAI/Python 1.51.0",
    "langchain-openai/0.2.3",
    "curl/8.5.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
)
MODELS = ("small-chat", "large-chat", "reasoner")


@dataclass
class Client:
    """Request-shape traits of one client (what its HTTP library and settings look like)."""

    name: str
    agent: str
    ip: str
    model: str
    temperature: float | None
    max_tokens: int | None
    system: str | None = None

    @classmethod
    def random(cls, name: str, rng: random.Random, system: str | None = None) -> Client:
        """A client with random traits."""
        ip = f"{rng.randint(11, 220)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        temperature = rng.choice((None, None, 0.0, 0.2, 0.7, 1.0))
        max_tokens = rng.choice((None, 256, 512, 1024, 2048))
        return cls(name, rng.choice(AGENTS), ip, rng.choice(MODELS), temperature, max_tokens, system)


def chat_body(
    client: Client, text: str, history: Sequence[tuple[str, str]] = (), **extra: Any
) -> dict[str, Any]:
    """An OpenAI-style chat body from ``client`` with prior ``(user, assistant)`` turns."""
    messages: list[dict[str, str]] = []
    if client.system:
        messages.append({"role": "system", "content": client.system})
    for user, assistant in history:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": text})
    body: dict[str, Any] = {"model": client.model, "messages": messages}
    if client.temperature is not None:
        body["temperature"] = client.temperature
    if client.max_tokens is not None:
        body["max_tokens"] = client.max_tokens
    body.update(extra)
    return body


@dataclass
class Stream:
    """One client's requests.

    Attributes:
        client: the client's traits.
        kind: the scenario, e.g. ``"benign:chat"``, ``"attack:template"``, ``"mixed:coverage:10"``.
        role: ``"benign"``, ``"attack"``, ``"mixed"`` or ``"campaign"``.
        events: ``(ts, path, body)`` in time order.
        attack: for mixed streams, whether each request is an attack query.
        group: the campaign of a campaign account.
    """

    client: Client
    kind: str
    role: str
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    attack: list[bool] = field(default_factory=list)
    group: str | None = None

    @property
    def name(self) -> str:
        """The client id."""
        return self.client.name


def write_log(streams: Iterable[Stream], path: Path) -> int:
    """Merge the streams in time order into a replay log at ``path``; return the line count."""
    rows: list[tuple[float, str]] = []
    for stream in streams:
        c = stream.client
        for ts, route, body in stream.events:
            line = json.dumps(
                {
                    "ts": round(ts, 3),
                    "client": c.name,
                    "path": route,
                    "body": body,
                    "headers": {"user-agent": c.agent},
                    "ip": c.ip,
                },
                ensure_ascii=False,
            )
            rows.append((ts, line))
    rows.sort(key=lambda r: r[0])
    with path.open("w", encoding="utf-8") as out:
        for _, line in rows:
            out.write(line)
            out.write("\n")
    return len(rows)

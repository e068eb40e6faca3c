"""Small real detectors and log builders for the replay tests (stand-ins for the built-ins)."""

from __future__ import annotations

import json
import random
from collections import deque
from pathlib import Path
from typing import Any

from distillguard.detectors import DetectorResult, Observation

WORDS = [
    "river",
    "garden",
    "music",
    "winter",
    "bread",
    "castle",
    "planet",
    "doctor",
    "window",
    "orange",
    "coffee",
    "mountain",
    "letter",
    "engine",
    "forest",
    "summer",
    "silver",
    "market",
    "island",
    "pencil",
    "museum",
    "rocket",
    "travel",
    "school",
    "camera",
    "candle",
    "bridge",
    "ocean",
    "violin",
    "tiger",
    "jacket",
    "kitchen",
    "library",
    "theatre",
    "harbor",
    "desert",
    "rabbit",
    "lantern",
]


class PrefixRepeat:
    """Share of the client's last 20 prompts that open with the same three words as this one."""

    name = "prefix_repeat"

    def __init__(self) -> None:
        self._recent: dict[str, deque[str]] = {}

    def score(self, observation: Observation) -> DetectorResult:
        words = observation.query.text.lower().split()[:3]
        prefix = " ".join(words)
        recent = self._recent.setdefault(observation.client_id, deque(maxlen=20))
        same = sum(1 for p in recent if p == prefix)
        score = same / len(recent) if len(recent) >= 10 else 0.0
        recent.append(prefix)
        return DetectorResult(self.name, score, ("prefix_repeat",) if score >= 0.5 else ())


class FieldScore:
    """Scores each request with the number in its body's ``s`` field (for calibration checks);
    raises for ``"s": "raise"``."""

    name = "field_score"

    def score(self, observation: Observation) -> DetectorResult:
        data = observation.query.data or {}
        value = data.get("s", 0.0)
        if value == "raise":
            raise RuntimeError("field_score failed")
        return DetectorResult(self.name, float(value) if isinstance(value, (int, float)) else 0.0)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-style chat body."""
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def line(ts: float, client: str, body: Any, path: str = "/v1/chat/completions", **extra: Any) -> str:
    """One log line."""
    return json.dumps({"ts": ts, "client": client, "path": path, "body": body, **extra})


def small_log(path: Path, *, seed: int = 7, benign: int = 6, per_client: int = 60) -> list[str]:
    """A log of ``benign`` varied users and one template sweeper (``attacker``), interleaved in
    time order; returns the lines written."""
    rng = random.Random(seed)
    events: list[tuple[float, str, dict[str, Any]]] = []
    t0 = 1_767_225_600.0
    for c in range(benign):
        t = t0 + rng.uniform(0, 600)
        for _ in range(per_client):
            t += rng.expovariate(1 / 90)
            words = rng.sample(WORDS, rng.randint(4, 9))
            events.append((t, f"user-{c}", chat(" ".join(words))))
    t = t0
    for i in range(per_client):
        t += 30.0
        topic = " ".join(rng.sample(WORDS, 2))
        events.append((t, "attacker", chat(f"Explain step by step how {topic} works, item {i}")))
    events.sort(key=lambda e: e[0])
    lines = [line(ts, client, body) for ts, client, body in events]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines

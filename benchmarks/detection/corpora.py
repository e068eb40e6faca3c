"""Text sources of the detection benchmark, split into a *tuning* part and a *holdout* part.

* chatterbot-corpus (BSD; ``pip install chatterbot-corpus``): question/answer pairs by topic and
  language. Tuning uses the English topics in :data:`TUNING_TOPICS`; the holdout uses the other
  English topics and other languages, never seen while tuning.
* the in-the-wild jailbreak prompts in ``../shared/data`` (hard negatives): split in two halves
  by a hash of the prompt (tuning / holdout).
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = [
    "HOLDOUT_LANGUAGES",
    "HOLDOUT_TOPICS",
    "TUNING_TOPICS",
    "Corpus",
    "jailbreaks",
    "load_corpus",
    "shared_data_dir",
]

TUNING_TOPICS = (
    "ai",
    "botprofile",
    "coding",
    "computers",
    "conversations",
    "emotion",
    "food",
    "gossip",
    "greetings",
    "health",
    "history",
    "humor",
    "literature",
    "money",
    "movies",
    "politics",
    "psychology",
    "science",
    "sports",
    "tech_support",
)
HOLDOUT_TOPICS = ("trivia",)
HOLDOUT_LANGUAGES = ("italian", "spanish", "portuguese", "dutch", "german", "french", "indonesian")


@dataclass(frozen=True)
class Corpus:
    """Questions, answers and the word vocabulary of a set of corpus files."""

    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    by_topic: dict[str, tuple[str, ...]]

    @functools.cached_property
    def vocabulary(self) -> tuple[str, ...]:
        """Distinct alphabetic words of the corpus, sorted."""
        words: set[str] = set()
        for text in self.questions + self.answers:
            for word in text.lower().split():
                word = word.strip(".,;:!?\"'()")
                if word.isalpha() and len(word) > 2:
                    words.add(word)
        return tuple(sorted(words))


def _data_root() -> Path:
    import chatterbot_corpus

    return Path(chatterbot_corpus.__file__).parent / "data"


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


@functools.cache
def load_corpus(language: str, topics: tuple[str, ...] | None = None) -> Corpus:
    """The conversations of ``language`` (all topics, or ``topics``)."""
    folder = _data_root() / language
    questions: list[str] = []
    answers: list[str] = []
    by_topic: dict[str, tuple[str, ...]] = {}
    for path in sorted(folder.glob("*.yml")):
        if topics is not None and path.stem not in topics:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        topic_questions: list[str] = []
        for conversation in data.get("conversations") or []:
            if not isinstance(conversation, list) or not conversation:
                continue
            q = _text(conversation[0])
            if q is None:
                continue
            topic_questions.append(q)
            for reply in conversation[1:]:
                a = _text(reply)
                if a is not None:
                    answers.append(a)
        unique = tuple(dict.fromkeys(topic_questions))
        questions.extend(unique)
        by_topic[path.stem] = unique
    name = language if topics is None else f"{language}:{'+'.join(topics)}"
    return Corpus(name, tuple(dict.fromkeys(questions)), tuple(dict.fromkeys(answers)), by_topic)


def shared_data_dir() -> Path:
    """``../shared/data`` next to the project (override with ``DISTILLGUARD_SHARED_DATA``)."""
    env = os.environ.get("DISTILLGUARD_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@functools.cache
def jailbreaks(part: str) -> tuple[str, ...]:
    """The in-the-wild jailbreak prompts of ``part`` (``"tuning"`` or ``"holdout"``).

    Raises:
        FileNotFoundError: when ``../shared/data`` is missing (say where it was looked for).
    """
    path = shared_data_dir() / "inthewild_jailbreak_prompts.json"
    if not path.exists():
        raise FileNotFoundError(f"jailbreak prompts not found at {path} (set DISTILLGUARD_SHARED_DATA)")
    prompts = [p for p in json.loads(path.read_text(encoding="utf-8")) if isinstance(p, str) and p.strip()]
    want = 0 if part == "tuning" else 1
    return tuple(p for p in prompts if zlib.crc32(p.encode()) % 2 == want)

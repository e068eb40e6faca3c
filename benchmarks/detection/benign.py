"""Benign traffic: conversational users, power users, legitimate logit_bias users and jailbreak
attempts (hard negatives: abusive, but not extraction).

Prompts are composed from a :class:`~benchmarks.detection.corpora.Corpus`: corpus questions,
with the small wrappers, follow-ups and pasted text real users add. Timing follows a day: a user
is active on some days, in sessions during their local waking hours.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from .corpora import Corpus
from .streams import DAY, START, Client, Stream, chat_body

__all__ = ["Composer", "benign_population", "chat_user", "jailbreak_user", "logit_bias_user", "power_user"]

CHAT = "/v1/chat/completions"

_OPENERS = ("", "", "", "", "hey, ", "quick question: ", "ok so ", "hi! ", "please help: ", "hmm, ", "so ")
_CLOSERS = ("", "", "", "", " thanks", " thx!", " please", "?", " :)", " (short answer is fine)")
_FOLLOWUPS = (
    "why?",
    "can you explain that?",
    "tell me more",
    "are you sure?",
    "what do you mean by that",
    "ok, and then?",
    "give me an example",
    "that doesn't sound right",
    "interesting. what else?",
    "can you say it more simply",
    "lol",
    "and how would I do that?",
)
_CLASSIFY = "Is the following message positive or negative? Answer with one word."
_SYSTEMS = (
    None,
    None,
    None,
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a support agent for our product.",
)


class Composer:
    """Varied user prompts from a corpus."""

    def __init__(self, corpus: Corpus, rng: random.Random, topics: Sequence[str] | None = None) -> None:
        self.corpus = corpus
        self.rng = rng
        pool: list[str] = []
        for topic in topics or sorted(corpus.by_topic):
            pool.extend(corpus.by_topic.get(topic, ()))
        self.questions = pool or list(corpus.questions)

    def _casual(self, text: str) -> str:
        rng = self.rng
        text = rng.choice(_OPENERS) + (text.lower() if rng.random() < 0.3 else text)
        return text.rstrip("?.!") + rng.choice(_CLOSERS) if rng.random() < 0.5 else text

    def question(self) -> str:
        """A question, maybe dressed up."""
        return self._casual(self.rng.choice(self.questions))

    def turn(self, last_answer: str | None) -> str:
        """The next user turn of a conversation."""
        rng = self.rng
        r = rng.random()
        if last_answer and r < 0.2:
            return rng.choice(_FOLLOWUPS)
        if last_answer and r < 0.3:
            words = last_answer.split()[:8]
            return f'you said "{" ".join(words)}" - {rng.choice(_FOLLOWUPS)}'
        if r < 0.42:
            return f"{self.question()} Also, {self.question().lower()}"
        if r < 0.5:
            return rng.choice(self.corpus.answers)  # a statement, pasted or typed
        return self.question()

    def long_prompt(self) -> str:
        """A power user's longer prompt: pasted text and a request about it."""
        rng = self.rng
        pasted = " ".join(rng.sample(self.corpus.answers, rng.randint(1, 4)))
        ask = rng.choice(
            (
                "Summarise this:",
                "Rewrite this more formally:",
                "What is wrong with this?",
                "Turn this into bullet points:",
                "Is this accurate?",
                "Explain this to my team:",
                "",
            )
        )
        return f"{ask}\n\n{pasted}\n\n{self.question()}" if rng.random() < 0.4 else f"{ask} {pasted}".strip()

    def answer(self) -> str:
        """An assistant reply, for the conversation history."""
        return self.rng.choice(self.corpus.answers)


def _active_days(rng: random.Random, days: int, p: float) -> list[int]:
    return [d for d in range(days) if rng.random() < p]


def _session_starts(
    rng: random.Random, day: int, tz: int, sessions: int, first: float, last: float
) -> list[float]:
    hours = sorted(rng.uniform(first, last) for _ in range(sessions))
    return [START + day * DAY + (h - tz) * 3600.0 for h in hours]


def chat_user(name: str, corpus: Corpus, rng: random.Random, days: int, kind: str = "benign:chat") -> Stream:
    """A conversational user: a few sessions on most days, conversations with history."""
    topics = rng.sample(sorted(corpus.by_topic), min(len(corpus.by_topic), rng.randint(2, 5)))
    composer = Composer(corpus, rng, topics)
    client = Client.random(name, rng, rng.choice(_SYSTEMS))
    stream = Stream(client, kind, "benign")
    tz = rng.randint(-8, 9)
    for day in _active_days(rng, days, rng.uniform(0.5, 0.95)):
        for t in _session_starts(rng, day, tz, rng.choice((1, 1, 2, 2, 3, 4)), 7.0, 23.5):
            history: list[tuple[str, str]] = []
            answer: str | None = None
            for _ in range(1 + min(29, int(rng.expovariate(1 / 5)))):
                text = composer.turn(answer)
                answer = composer.answer()
                stream.events.append((t, CHAT, chat_body(client, text, history[-2:])))
                history.append((text, answer))
                t += max(3.0, rng.lognormvariate(math.log(45.0), 0.9))
    return stream


def power_user(name: str, corpus: Corpus, rng: random.Random, days: int, per_day: tuple[int, int]) -> Stream:
    """A heavy user: many varied requests per day over long working hours, pasted text, and
    now and then a small batch of one instruction over their own texts."""
    composer = Composer(corpus, rng)
    client = Client.random(name, rng, rng.choice(_SYSTEMS))
    stream = Stream(client, "benign:power", "benign")
    tz = rng.randint(-8, 9)
    for day in _active_days(rng, days, 0.8):
        n = rng.randint(*per_day)
        start = START + day * DAY + (rng.uniform(6.0, 10.0) - tz) * 3600.0
        length = rng.uniform(8.0, 15.0) * 3600.0
        times = sorted(start + rng.uniform(0, length) for _ in range(n))
        i = 0
        while i < len(times):
            if rng.random() < 0.02:  # a small batch over their own texts
                ask = rng.choice(
                    ("Summarise:", "Fix the grammar:", "Translate to Spanish:", "Give a title for:")
                )
                for _ in range(rng.randint(4, 10)):
                    if i >= len(times):
                        break
                    stream.events.append((times[i], CHAT, chat_body(client, f"{ask} {composer.answer()}")))
                    i += 1
                continue
            text = composer.long_prompt() if rng.random() < 0.35 else composer.turn(None)
            stream.events.append((times[i], CHAT, chat_body(client, text)))
            i += 1
    return stream


def jailbreak_user(
    name: str, corpus: Corpus, prompts: Sequence[str], rng: random.Random, days: int
) -> Stream:
    """Hard negative: tries in-the-wild jailbreak prompts with a few questions each."""
    composer = Composer(corpus, rng)
    client = Client.random(name, rng)
    stream = Stream(client, "benign:jailbreak", "benign")
    tz = rng.randint(-8, 9)
    for day in _active_days(rng, days, 0.6):
        for t in _session_starts(rng, day, tz, rng.choice((1, 1, 2)), 9.0, 26.0):
            for _ in range(rng.randint(1, 4)):
                jailbreak = rng.choice(prompts)
                for _ in range(rng.randint(1, 5)):
                    text = f"{jailbreak}\n\n{composer.question()}"
                    stream.events.append((t, CHAT, chat_body(client, text)))
                    t += max(5.0, rng.lognormvariate(math.log(60.0), 0.8))
    return stream


def logit_bias_user(name: str, corpus: Corpus, rng: random.Random, days: int) -> Stream:
    """A legitimate logit_bias user: a fixed small bias set on every request, either banning a
    few tokens in chat, or a classifier forcing one of two label tokens (``max_tokens=1``,
    sometimes with ``top_logprobs``)."""
    composer = Composer(corpus, rng)
    client = Client.random(name, rng)
    classifier = rng.random() < 0.4
    ids = [str(rng.randint(200, 100_000)) for _ in range(rng.randint(1, 5))]
    stream = Stream(client, "benign:logit_bias", "benign")
    tz = rng.randint(-8, 9)
    extra: dict[str, Any]
    if classifier:
        labels = ids[:2] if len(ids) >= 2 else [ids[0], str(int(ids[0]) + 1)]
        extra = {"logit_bias": {labels[0]: 100, labels[1]: 100}, "max_tokens": 1}
        if rng.random() < 0.5:
            extra.update(logprobs=True, top_logprobs=2)
    else:
        extra = {"logit_bias": {i: -100 for i in ids}}
    for day in _active_days(rng, days, 0.75):
        for t in _session_starts(rng, day, tz, rng.choice((1, 2, 3)), 8.0, 22.0):
            for _ in range(rng.randint(2, 25)):
                text = f"{_CLASSIFY}\n\n{composer.answer()}" if classifier else composer.turn(None)
                stream.events.append((t, CHAT, chat_body(client, text, **extra)))
                t += max(2.0, rng.lognormvariate(math.log(30.0), 1.0))
    return stream


def benign_population(
    corpus: Corpus,
    jailbreak_prompts: Sequence[str],
    rng: random.Random,
    *,
    users: int,
    days: int,
    prefix: str = "user",
) -> list[Stream]:
    """``users`` benign clients: 86% conversational, 5% power users, 4% jailbreak attempts,
    5% logit_bias users."""
    streams = []
    for i in range(users):
        name = f"{prefix}-{i:04d}"
        r = rng.random()
        if r < 0.05:
            streams.append(power_user(name, corpus, rng, days, (60, 400)))
        elif r < 0.09:
            streams.append(jailbreak_user(name, corpus, jailbreak_prompts, rng, days))
        elif r < 0.14:
            streams.append(logit_bias_user(name, corpus, rng, days))
        else:
            streams.append(chat_user(name, corpus, rng, days))
    return streams

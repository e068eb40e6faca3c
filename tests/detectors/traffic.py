"""Synthetic traffic for the detector tests: varied benign users and attack streams."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distillguard.detectors import Observation
from distillguard.identity import Identity
from distillguard.query import Query, parse_query

JAILBREAKS = Path("/work/shared/data/inthewild_jailbreak_prompts.json")

TOPICS = {
    "cooking": [
        "pasta",
        "sourdough",
        "curry",
        "a roast chicken",
        "pancakes",
        "risotto",
        "tofu",
        "brownies",
        "lentil soup",
        "fried rice",
        "a lemon tart",
        "dumplings",
        "guacamole",
        "chili",
        "focaccia",
    ],
    "coding": [
        "a Python decorator",
        "a memory leak",
        "a SQL join",
        "async code",
        "a regex",
        "unit tests",
        "a REST endpoint",
        "git rebase",
        "a segfault",
        "type hints",
        "a race condition",
        "Docker",
    ],
    "travel": [
        "Lisbon",
        "Kyoto",
        "a cheap flight",
        "jet lag",
        "a rail pass",
        "Iceland in winter",
        "a hostel",
        "travel insurance",
        "Marrakech",
        "a road trip",
        "packing light",
        "Patagonia",
    ],
    "health": [
        "back pain",
        "sleep",
        "a cold",
        "running",
        "stretching",
        "stress",
        "a headache",
        "vitamin D",
        "knee pain",
        "hydration",
        "a sprained ankle",
        "allergies",
    ],
    "money": [
        "a budget",
        "a pension",
        "credit card debt",
        "index funds",
        "a mortgage",
        "taxes",
        "an emergency fund",
        "a car loan",
        "inflation",
        "saving for a house",
    ],
    "home": [
        "a leaking tap",
        "mould",
        "a squeaky door",
        "houseplants",
        "a small garden",
        "paint colours",
        "a noisy fridge",
        "damp walls",
        "a wobbly table",
        "composting",
    ],
}

FRAMES = [
    "how do I deal with {x}?",
    "Can you give me some advice about {x}",
    "what's the best way to handle {x} when I'm short on time",
    "I've been struggling with {x} lately, any tips?",
    "Quick question: is {x} something I should worry about?",
    "explain {x} to me like I'm a beginner",
    "My friend says {x} is overrated. What do you think?",
    "Thanks! And what about {x}?",
    "Could you compare {x} and {y} for me?",
    "ok that makes sense. one more thing, {x}?",
    "Any common mistakes people make with {x}",
    "I tried what you said about {x} but it didn't work",
    "Write me a short checklist for {x}.",
    "what should I read to learn more about {x}",
    "is there a cheaper alternative to {x}",
    "{x} or {y}, which one would you pick and why?",
    "so confused about {x} right now",
    "Do you know any good resources on {x}? I'm on a budget.",
    "Summarise the key things to know about {x} in three bullet points",
    "Why does everyone online argue about {x}?",
]

CHAT = [
    "hello there",
    "thanks, that was really helpful!",
    "lol no",
    "can you say that more simply?",
    "what's your name?",
    "good morning :)",
    "hmm I'm not sure that's right",
    "tell me a joke",
    "That's great, thank you so much",
    "wait, why?",
    "ok",
    "never mind",
    "can you shorten that",
    "I'm bored, suggest something fun to do tonight",
    "what day is it today?",
    "How are you doing this evening?",
    "sorry, I meant the other one",
    "yes please",
]


def benign_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """A benign user's stream: a couple of favourite topics, free phrasing, some small talk."""
    topics = rng.sample(sorted(TOPICS), 2)
    for _ in range(n):
        if rng.random() < 0.2:
            yield rng.choice(CHAT)
            continue
        pool = TOPICS[rng.choice(topics)]
        x, y = rng.sample(pool, 2)
        text = rng.choice(FRAMES).format(x=x, y=y)
        if rng.random() < 0.3:
            text += " " + rng.choice(
                [
                    "Thanks!",
                    "I have a week.",
                    "It's for my mum.",
                    "Be honest.",
                    "Keep it short please.",
                    "I live in a small flat.",
                    "No jargon.",
                ]
            )
        yield text


def jailbreak_prompts() -> list[str]:
    """The in-the-wild jailbreak prompts (hard negatives: abusive, not extraction)."""
    data: list[str] = json.loads(JAILBREAKS.read_text("utf-8"))
    return data


def template_sweep(rng: random.Random, n: int) -> Iterator[str]:
    """A distillation sweep: one reasoning-elicitation template, a varying subject."""
    subjects = [
        f"{a} {b}"
        for a in (
            "quantum",
            "organic",
            "medieval",
            "marine",
            "urban",
            "applied",
            "statistical",
            "classical",
            "molecular",
            "political",
        )
        for b in (
            "chemistry",
            "history",
            "biology",
            "economics",
            "physics",
            "ethics",
            "law",
            "geology",
            "linguistics",
            "astronomy",
        )
    ]
    for i in range(n):
        topic = subjects[rng.randrange(len(subjects))]
        yield (
            f"You are an expert tutor. Explain step by step the most important concept in {topic}, "
            f"show your reasoning in detail and then give a final answer for question {i}."
        )


def chat_body(text: str, **extra: Any) -> bytes:
    """An OpenAI-style chat request body."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    return json.dumps(body).encode()


def query(text: str, **extra: Any) -> Query:
    """A parsed chat query."""
    return parse_query(chat_body(text, **extra))


def observation(client: str, q: Query, ts: float = 0.0) -> Observation:
    """An observation of ``q`` from ``client`` at ``ts``."""
    return Observation(
        identity=Identity(client_id=client),
        timestamp=ts,
        method="POST",
        route="/v1/chat/completions",
        query=q,
    )


_FOREIGN_FUNCTION = [
    "il",
    "la",
    "di",
    "che",
    "e",
    "un",
    "una",
    "per",
    "non",
    "con",
    "mi",
    "ti",
    "come",
    "sono",
    "ho",
    "del",
    "della",
    "questo",
    "quando",
    "perche",
    "cosa",
    "posso",
    "puoi",
    "si",
    "ma",
    "anche",
    "molto",
]
_SYLLABLES = [
    "ba",
    "be",
    "bi",
    "bo",
    "ca",
    "ce",
    "ci",
    "co",
    "da",
    "de",
    "di",
    "do",
    "fa",
    "fe",
    "fi",
    "la",
    "le",
    "li",
    "lo",
    "ma",
    "me",
    "mi",
    "mo",
    "na",
    "ne",
    "ni",
    "no",
    "pa",
    "pe",
    "pi",
    "po",
    "ra",
    "re",
    "ri",
    "ro",
    "sa",
    "se",
    "si",
    "so",
    "ta",
    "te",
    "ti",
    "to",
    "va",
    "ve",
    "vi",
    "vo",
    "za",
]
_FOREIGN_CONTENT = [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in ("re", "to", "ne", "la")]


def foreign_prompts(rng: random.Random, n: int) -> Iterator[str]:
    """A diverse user writing in a language the built-in reference does not cover (its own
    function words, a large content vocabulary)."""
    for _ in range(n):
        k = rng.randint(6, 14)
        words = (
            rng.choice(_FOREIGN_FUNCTION) if rng.random() < 0.55 else rng.choice(_FOREIGN_CONTENT)
            for _ in range(k)
        )
        yield " ".join(words) + "?"

"""The simulated traffic of ``distillguard demo``: benign users and one extractor.

Each client gets a schedule of calls on a simulated clock (seconds from the start), so the demo
replays about fifteen minutes of human-paced traffic in a few seconds of real time. Benign users
ask varied natural questions at irregular intervals; the extractor sweeps one template over many
subjects at a steady pace, then probes log probabilities with ``max_tokens=1`` and a rotating
``logit_bias``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BENIGN_USERS", "EXTRACTOR", "Call", "schedule"]

BENIGN_USERS = ("alice", "bob", "carol")
EXTRACTOR = "mallory"

QUESTIONS = (
    "What's a good way to keep basil alive on a windowsill?",
    "Can you summarise the plot of Pride and Prejudice in a few sentences?",
    "My sourdough came out dense again. Any idea what I did wrong?",
    "Which is better for a beginner, a road bike or a hybrid?",
    "How do I politely decline a meeting invitation from my manager?",
    "Write a short birthday message for my grandmother who turns 90.",
    "Why does the sky look orange at sunset?",
    "What are some cheap day trips from Lisbon?",
    "Is it safe to give my dog a little peanut butter?",
    "I keep waking up at 4am. What could be causing that?",
    "Translate 'where is the train station' into Italian, please.",
    "Could you suggest a name for a grey kitten with white paws?",
    "What's the difference between a latte and a flat white?",
    "Help me write a cover letter opening for a junior data analyst role.",
    "How long should I boil an egg for a runny yolk?",
    "what was the treaty of westphalia about",
    "Give me three ideas for a rainy Sunday with two kids under six.",
    "Why do cats knead blankets?",
    "How do I remove a red wine stain from a cotton shirt?",
    "Can you explain compound interest like I'm twelve?",
    "Recommend a few podcasts about the history of science.",
    "My tomato leaves are turning yellow from the bottom up. Should I worry?",
    "What should I pack for a week of hiking in Scotland in May?",
    "Is there a rule of thumb for tipping in Japan?",
    "Rewrite this to sound friendlier: 'Send me the report by Friday.'",
    "How many cups of coffee a day is too many?",
    "Why is my python script saying ModuleNotFoundError when the package is installed?",
    "Suggest a vegetarian dinner I can make in twenty minutes.",
    "What's a polite way to ask neighbours to keep the noise down?",
    "Tell me a fun fact about octopuses.",
    "How do solar panels work on cloudy days?",
    "We're naming our bakery. Any ideas that play on the word 'rise'?",
    "Is it worth learning Latin in 2026?",
    "What are the symptoms of burnout and how do I talk to my boss about it?",
    "Explain offside in football, briefly.",
    "Quick question: does freezing bread change its taste?",
    "How do I convince my teenager to read more?",
    "What did people eat in medieval England on a normal day?",
    "Can you check the grammar in: 'Me and him goes to the market every Saturdays.'",
    "Plan a three-day itinerary for Kyoto focused on gardens.",
    "What's the best way to store fresh herbs?",
    "Why do we get goosebumps?",
    "Draft a two-line apology for missing my friend's party.",
    "how far can a hot air balloon travel in a day",
    "Are electric kettles cheaper to run than the stove?",
    "Give me a mnemonic for the planets in order.",
    "What's a good stretch for lower back pain after sitting all day?",
    "My landlord hasn't fixed the heating in two weeks. What are my options?",
)

SUBJECTS = (
    "bake a loaf of bread", "change a car tyre", "file a tax return", "train for a marathon",
    "brew beer at home", "write a cover letter", "set up a home network", "plant a vegetable garden",
    "learn to juggle", "negotiate a salary", "paint a room", "repair a bicycle puncture",
    "make fresh pasta", "start a podcast", "invest in index funds", "prepare for a job interview",
    "build a bookshelf", "clean a cast iron pan", "learn a new language", "write a haiku",
    "fold a paper crane", "tie a bowline knot", "make cold brew coffee", "unclog a sink",
    "knit a scarf", "install a ceiling fan", "meditate for beginners", "write a business plan",
    "photograph the night sky", "care for a bonsai", "ferment kimchi", "calculate a mortgage",
    "back up a laptop", "wax a snowboard", "sharpen a kitchen knife", "plan a wedding budget",
    "groom a long-haired dog", "compost kitchen scraps", "play a barre chord", "write a eulogy",
    "solve a Rubik's cube", "make a sourdough starter", "patch drywall", "build a campfire",
    "read a nutrition label",
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request of the simulation.

    Attributes:
        at: when it is sent (simulated seconds from the start).
        client: the client's identity (the token's ``sub``).
        role: ``"benign"`` or ``"extractor"``.
        kind: a short label for the log (``question``, ``sweep``, ``probe``...).
        params: keyword arguments for ``client.chat.completions.create``.
    """

    at: float
    client: str
    role: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The user message of the call."""
        text: str = self.params["messages"][-1]["content"]
        return text


def _message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _benign(rng: random.Random, client: str, count: int) -> list[Call]:
    calls = []
    at = rng.uniform(0, 90)
    for question in rng.sample(QUESTIONS, count):
        params: dict[str, Any] = {"model": "distillguard-mock-1", "messages": _message(question)}
        kind = "question"
        if rng.random() < 0.25:
            params["stream"] = True
            kind = "stream"
        if rng.random() < 0.3:
            params["temperature"] = round(rng.uniform(0.2, 1.0), 2)
        calls.append(Call(at=at, client=client, role="benign", kind=kind, params=params))
        at += rng.lognormvariate(4.0, 0.7)  # a median of about 55 s between questions
    return calls


def _extractor(rng: random.Random, sweep: int, probes: int) -> list[Call]:
    calls = []
    at = 60.0
    for subject in rng.sample(SUBJECTS, sweep):
        text = f"Explain step by step how to {subject}."
        calls.append(
            Call(
                at=at,
                client=EXTRACTOR,
                role="extractor",
                kind="sweep",
                params={"model": "distillguard-mock-1", "messages": _message(text), "max_tokens": 512},
            )
        )
        at += 6.0 + rng.uniform(-0.05, 0.05)
    for i in range(probes):
        token_id = 1000 + 37 * i
        calls.append(
            Call(
                at=at,
                client=EXTRACTOR,
                role="extractor",
                kind="probe",
                params={
                    "model": "distillguard-mock-1",
                    "messages": _message("Say one word."),
                    "max_tokens": 1,
                    "logprobs": True,
                    "top_logprobs": 5,
                    "logit_bias": {str(token_id): 100},
                },
            )
        )
        at += 3.0 + rng.uniform(-0.05, 0.05)
    return calls


def schedule(seed: int = 7, *, questions: int = 12, sweep: int = 40, probes: int = 20) -> list[Call]:
    """Every call of the simulation, in the order they are sent."""
    rng = random.Random(seed)
    calls = [c for user in BENIGN_USERS for c in _benign(rng, user, questions)]
    calls.extend(_extractor(rng, sweep, probes))
    return sorted(calls, key=lambda c: c.at)

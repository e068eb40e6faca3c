"""Extraction and distillation traffic.

* **template sweep**: one instruction template, slots filled from a vocabulary, including
  reasoning elicitation ("explain step by step", "show your chain of thought");
* **coverage sweep**: natural prompts replayed from a corpus, each once (the KnockoffNets /
  CopycatCNN pattern for text: query by query indistinguishable from a user);
* **random words** (Krishna et al. 2020, "Thieves on Sesame Street"): sequences of random
  vocabulary words;
* **logprob / logit_bias probes** (Carlini et al. 2024): few distinct prompts, ``max_tokens=1``,
  ``top_logprobs=5``, a large ``logit_bias`` on a rotating set of token ids sweeping the
  vocabulary (variants: one id per query, logit_bias alone with varying bias values, legacy
  completions with ``logprobs=5``);
* **campaigns**: one of the above split over many accounts that each stay under a daily limit,
  on a shared cadence, optionally blended with benign-looking traffic ("hydra" proxies).

``variant="holdout"`` switches to templates, phrasings and parameters not used while tuning.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from .corpora import Corpus
from .streams import DAY, START, Client, Stream, chat_body

__all__ = ["ATTACKS", "QueryMaker", "attack_stream", "campaign_streams", "query_maker"]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

TEMPLATES = (
    "Explain step by step how {a} works.",
    "Think step by step and show all of your reasoning: what is the relationship between {a} and {b}?",
    "Q: {q}\nA: Let's think step by step.",
    "Write a detailed answer and show your chain of thought before the final answer. Question: {q}",
    "Give three examples of {a}, and explain your reasoning for each one.",
    "What is {a}? Answer in one sentence, then justify the answer step by step.",
    "Describe {a} to a five year old, reasoning out loud as you go.",
    "You are an expert. Provide a thorough, step-by-step explanation of {a} and {b}.",
)
HOLDOUT_TEMPLATES = (
    "Walk me through, one stage at a time, the way {a} functions.",
    "Before you reply, lay out every intermediate thought. Topic: {q}",
    "Reason carefully and verbosely about {a} versus {b}; end with a verdict.",
    "Problem: {q}\nSolution (show work):",
    "I need a tutorial-style breakdown of {a}, covering each step in order.",
    "Per favore spiega passo dopo passo: {q}",
)

QueryMaker = Callable[[int], tuple[str, dict[str, Any]]]
"""Makes the ``i``-th attack query: ``(path, body)``."""


def _template(client: Client, corpus: Corpus, rng: random.Random, variant: str) -> QueryMaker:
    templates = HOLDOUT_TEMPLATES if variant == "holdout" else TEMPLATES
    template = rng.choice(templates)
    words = [w for w in corpus.vocabulary if len(w) > 3]

    def make(i: int) -> tuple[str, dict[str, Any]]:
        text = template.format(a=rng.choice(words), b=rng.choice(words), q=rng.choice(corpus.questions))
        return CHAT, chat_body(client, text)

    return make


def _coverage(client: Client, corpus: Corpus, rng: random.Random, variant: str) -> QueryMaker:
    pool = list(dict.fromkeys(corpus.questions + corpus.answers))
    rng.shuffle(pool)

    def make(i: int) -> tuple[str, dict[str, Any]]:
        return CHAT, chat_body(client, pool[i % len(pool)])

    return make


def _random_words(client: Client, corpus: Corpus, rng: random.Random, variant: str) -> QueryMaker:
    vocab = corpus.vocabulary

    def make(i: int) -> tuple[str, dict[str, Any]]:
        words = [rng.choice(vocab) for _ in range(rng.randint(8, 40))]
        text = " ".join(words)
        if variant == "holdout" and rng.random() < 0.5:
            text = text.capitalize() + "?"
        return CHAT, chat_body(client, text)

    return make


def _probe(client: Client, corpus: Corpus, rng: random.Random, variant: str) -> QueryMaker:
    prompts = rng.sample(corpus.questions, rng.randint(1, 3))
    style = rng.choice(("top5", "top5", "single", "bias_only", "legacy"))
    vocab_size = 100_000
    start = rng.randrange(vocab_size)
    per_query = 1 if style == "single" else 5
    holdout = variant == "holdout"
    if holdout:
        per_query = rng.choice((1, 3, 10))

    def make(i: int) -> tuple[str, dict[str, Any]]:
        prompt = prompts[i % len(prompts)]
        if holdout:
            ids = [rng.randrange(vocab_size) for _ in range(per_query)]
            bias_value: float = rng.choice((-100, 100, 50))
        else:
            ids = [(start + i * per_query + k) % vocab_size for k in range(per_query)]
            bias_value = 100
        if style == "bias_only":  # logit_bias alone: bias values searched on the same few ids
            ids = [(start + i // 8) % vocab_size]
            bias_value = round(rng.uniform(-20, 20), 2)
        bias = {str(t): bias_value for t in ids}
        if style == "legacy":
            body = {
                "model": client.model,
                "prompt": prompt,
                "max_tokens": 1,
                "logprobs": 5,
                "logit_bias": bias,
            }
            return COMPLETIONS, body
        extra: dict[str, Any] = {"max_tokens": 1, "logit_bias": bias}
        if style != "bias_only":
            extra.update(logprobs=True, top_logprobs=20 if holdout else 5)
        base = Client(client.name, client.agent, client.ip, client.model, None, None)
        return CHAT, chat_body(base, prompt, **extra)

    return make


ATTACKS: dict[str, Callable[[Client, Corpus, random.Random, str], QueryMaker]] = {
    "template": _template,
    "coverage": _coverage,
    "random_words": _random_words,
    "probe": _probe,
}


def query_maker(
    attack: str, client: Client, corpus: Corpus, rng: random.Random, variant: str = "tuning"
) -> QueryMaker:
    """The query maker of ``attack`` (a key of :data:`ATTACKS`)."""
    return ATTACKS[attack](client, corpus, rng, variant)


def attack_stream(
    name: str,
    attack: str,
    corpus: Corpus,
    rng: random.Random,
    *,
    queries: int,
    days: int,
    variant: str = "tuning",
) -> Stream:
    """One client running ``attack`` for ``queries`` requests, a request every few seconds,
    around the clock, starting on a random day."""
    client = Client.random(name, rng)
    make = query_maker(attack, client, corpus, rng, variant)
    stream = Stream(client, f"attack:{attack}", "attack")
    t = START + rng.uniform(0, max(1, days - 2)) * DAY
    mean_gap = rng.uniform(3.0, 20.0)
    for i in range(queries):
        route, body = make(i)
        stream.events.append((t, route, body))
        t += rng.uniform(0.5, 1.5) * mean_gap
    return stream


def campaign_streams(
    group: str,
    attack: str,
    corpus: Corpus,
    rng: random.Random,
    *,
    accounts: int,
    per_day: int,
    days: int,
    blend: float = 0.0,
    benign: Callable[[Client], tuple[str, dict[str, Any]]] | None = None,
    variant: str = "tuning",
    poisson: bool = False,
) -> list[Stream]:
    """A campaign: ``attack`` split over ``accounts`` accounts, each sending ``per_day``
    requests a day (under a daily limit) on a shared cadence (the same mean gap, small jitter;
    with ``poisson``, exponential gaps of the same mean instead: no machine cadence);
    a ``blend`` share of each account's requests is benign-looking traffic from ``benign``."""
    shared = Client.random(f"{group}-0", rng)
    make = query_maker(attack, shared, corpus, rng, variant)
    cadence = DAY / per_day
    streams: list[Stream] = []
    counter = 0
    start = START + rng.uniform(0, DAY)
    for a in range(accounts):
        client = Client.random(f"{group}-{a:02d}", rng)
        client.agent, client.model = shared.agent, shared.model  # one toolkit drives every account
        stream = Stream(client, f"campaign:{attack}", "campaign", group=group)
        t = start + a * cadence / accounts
        for _ in range(per_day * days):
            is_attack = not (benign is not None and rng.random() < blend)
            if is_attack:
                route, body = make(counter)
                counter += 1
                body = {**body, "model": client.model}
            else:
                route, body = benign(client)  # type: ignore[misc]
            stream.events.append((t, route, body))
            stream.attack.append(is_attack)
            t += cadence * (rng.expovariate(1.0) if poisson else rng.uniform(0.9, 1.1))
        streams.append(stream)
    return streams


def mixed_stream(
    base: Stream, attack: str, share: float, corpus: Corpus, rng: random.Random, variant: str = "tuning"
) -> Stream:
    """``base`` (a heavy benign user) with a ``share`` of its requests replaced by ``attack``
    queries at random positions, keeping the timing of the base stream."""
    make = query_maker(attack, base.client, corpus, rng, variant)
    n = len(base.events)
    chosen = set(rng.sample(range(n), round(share * n)))
    stream = Stream(base.client, f"mixed:{attack}:{round(share * 100)}", "mixed")
    k = 0
    for i, (ts, route, body) in enumerate(base.events):
        if i in chosen:
            route, body = make(k)
            k += 1
        stream.events.append((ts, route, body))
        stream.attack.append(i in chosen)
    return stream


def sample_names(prefix: str, count: int) -> Sequence[str]:
    """``prefix-00`` ... names."""
    return [f"{prefix}-{i:02d}" for i in range(count)]

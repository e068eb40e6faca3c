"""The default detector set with the risk policy on benign and attack streams (no HTTP).

Benign: varied conversational users from a generator and clients replaying the in-the-wild
jailbreak prompts (hard negatives). Attacks: a reasoning-elicitation template sweep and a
Carlini-style logprob/logit_bias probe. Quality bar: no benign client blocked, every template
sweep flagged within 100 queries, every probe within 20 requests.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

from distillguard import Action
from distillguard.detectors.defaults import default_detectors
from distillguard.query import Query
from distillguard.risk import RiskEngine, RiskPolicy
from tests.detectors.traffic import benign_prompts, jailbreak_prompts, observation, query, template_sweep


def run(queries: Iterable[Query], client: str, gap: float = 20.0, seed: int = 0) -> list[Action]:
    """Feed one client's stream through fresh default detectors and a risk engine."""
    detectors = default_detectors()
    engine = RiskEngine(RiskPolicy())
    rng = random.Random(seed)
    actions: list[Action] = []
    ts = 1_700_000_000.0
    for q in queries:
        ts += rng.expovariate(1.0 / gap)
        obs = observation(client, q, ts)
        verdict = engine.assess(client, [d.score(obs) for d in detectors], ts)
        actions.append(verdict.action)
    return actions


def first(actions: list[Action], at_least: Action) -> int | None:
    """1-based index of the first action at or above ``at_least`` (FLAG < DEGRADE < BLOCK)."""
    order = {Action.ALLOW: 0, Action.FLAG: 1, Action.DEGRADE: 2, Action.BLOCK: 3}
    for i, action in enumerate(actions, 1):
        if order[action] >= order[at_least]:
            return i
    return None


@pytest.mark.slow
def test_benign_conversational_users_are_never_blocked() -> None:
    """Sixty varied benign users of 300 requests each: none blocked, none even flagged."""
    for user in range(60):
        rng = random.Random(user)
        actions = run((query(t) for t in benign_prompts(rng, 300)), f"user-{user}", seed=user)
        assert first(actions, Action.FLAG) is None, f"user {user} flagged"


def test_jailbreak_replayers_are_not_blocked() -> None:
    """Clients replaying the 666 jailbreak prompts (shuffled) are abusive but not extracting:
    never blocked."""
    prompts = jailbreak_prompts()
    for seed in range(3):
        rng = random.Random(seed)
        sample = rng.sample(prompts, 200)
        actions = run((query(t) for t in sample), f"jb-{seed}", seed=seed)
        assert first(actions, Action.BLOCK) is None


def test_template_sweeps_flagged_within_100_queries() -> None:
    """A one-client reasoning-elicitation template sweep is flagged within 100 queries and
    blocked soon after, whatever the seed."""
    for seed in range(5):
        rng = random.Random(seed)
        actions = run((query(t) for t in template_sweep(rng, 150)), f"sweep-{seed}", gap=2.0, seed=seed)
        flagged = first(actions, Action.FLAG)
        assert flagged is not None and flagged <= 100
        assert first(actions, Action.BLOCK) is not None


def probe_queries(n: int, seed: int) -> list[Query]:
    """Carlini et al.-style probes: one prompt, logprobs, max_tokens=1, a large bias on a
    rotating window of token ids sweeping the vocabulary."""
    rng = random.Random(seed)
    base = rng.randrange(50_000)
    return [
        query(
            "Say one word.",
            logprobs=True,
            top_logprobs=5,
            max_tokens=1,
            logit_bias={str((base + 10 * i + k) % 100_000): 100 for k in range(10)},
        )
        for i in range(n)
    ]


def test_logit_bias_probes_flagged_within_20_requests() -> None:
    """Logprob + rotating logit_bias probes are blocked within 20 requests."""
    for seed in range(5):
        actions = run(probe_queries(40, seed), f"probe-{seed}", gap=1.0, seed=seed)
        blocked = first(actions, Action.BLOCK)
        assert blocked is not None and blocked <= 20


def test_fixed_logit_bias_users_are_not_flagged() -> None:
    """A classifier built on the API (fixed yes/no logit_bias, logprobs, max_tokens=1) over
    varied questions is never flagged."""
    rng = random.Random(3)
    texts = list(benign_prompts(rng, 300))
    extra: dict[str, Any] = {"logprobs": True, "max_tokens": 1, "logit_bias": {"9642": 10, "2360": 10}}
    actions = run((query(t, **extra) for t in texts), "classifier")
    assert first(actions, Action.FLAG) is None

"""The benchmark's populations: the tuning set and the holdout set.

Both mix benign users, single-client attackers of each family, benign heavy users with a share
of attack queries (mixed traffic) and multi-account campaigns. The holdout uses other corpora
(held-out English topics and other languages), the other half of the jailbreak prompts, and the
``"holdout"`` attack variants (paraphrased templates, other vocabularies, other probe shapes).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .attacks import attack_stream, campaign_streams, mixed_stream
from .benign import Composer, benign_population, power_user
from .corpora import HOLDOUT_LANGUAGES, HOLDOUT_TOPICS, TUNING_TOPICS, Corpus, jailbreaks, load_corpus
from .streams import Client, Stream, chat_body
from .vectors import VECTOR_WITHIN

__all__ = [
    "ATTACK_QUERIES",
    "DETECT_WITHIN",
    "SHARES",
    "Scale",
    "holdout_corpus",
    "population",
    "tuning_corpus",
]

ATTACK_QUERIES = {"template": 400, "coverage": 1500, "random_words": 300, "probe": 120}
"""Queries sent by each single-client attacker."""
DETECT_WITHIN = {"template": 100, "coverage": 1500, "random_words": 100, "probe": 20, **VECTOR_WITHIN}
"""The "detected within N queries" budget of each family (section 5 of the detection reference)."""
SHARES = (0.05, 0.10, 0.25, 0.50)
"""Attack shares of mixed-traffic clients."""
MIXED_FAMILIES = ("coverage", "template", "random_words", "probe")


@dataclass(frozen=True)
class Scale:
    """How big a run is."""

    users: int = 600
    days: int = 8
    attackers: int = 20
    mixed: int = 5
    mixed_queries: int = 1500
    campaign_accounts: int = 24
    campaign_per_day: int = 40
    campaign_days: int = 5
    attack_scale: float = 1.0

    def holdout(self) -> Scale:
        """The holdout's scale: half the users and mixed clients."""
        return Scale(
            users=max(10, self.users // 2),
            days=self.days,
            attackers=self.attackers,
            mixed=max(1, self.mixed // 2),
            mixed_queries=self.mixed_queries,
            campaign_accounts=self.campaign_accounts,
            campaign_per_day=self.campaign_per_day,
            campaign_days=self.campaign_days,
            attack_scale=self.attack_scale,
        )

    @classmethod
    def quick(cls) -> Scale:
        """A tiny run (seconds), for the smoke test."""
        return cls(
            users=20,
            days=2,
            attackers=2,
            mixed=1,
            mixed_queries=200,
            campaign_accounts=20,
            campaign_per_day=6,
            campaign_days=2,
        )


def tuning_corpus() -> Corpus:
    """The English topics used while tuning."""
    return load_corpus("english", TUNING_TOPICS)


def holdout_corpus(rng: random.Random) -> Corpus:
    """Held-out English topics and other languages, merged (texts also in the tuning corpus,
    such as names and greetings, are dropped)."""
    tuning = tuning_corpus()
    seen = set(tuning.questions) | set(tuning.answers)
    parts = [load_corpus("english", HOLDOUT_TOPICS)] + [load_corpus(lang) for lang in HOLDOUT_LANGUAGES]
    questions: list[str] = []
    answers: list[str] = []
    by_topic: dict[str, tuple[str, ...]] = {}
    for part in parts:
        questions.extend(q for q in part.questions if q not in seen)
        answers.extend(a for a in part.answers if a not in seen)
        for topic, qs in part.by_topic.items():
            by_topic[f"{part.name}/{topic}"] = tuple(q for q in qs if q not in seen)
    return Corpus("holdout", tuple(questions), tuple(answers), by_topic)


def population(
    corpus: Corpus,
    part: str,
    seed: int,
    scale: Scale,
    *,
    benign_only: bool = False,
    attacks_only: bool = False,
) -> list[Stream]:
    """Every stream of one run. ``part`` is ``"tuning"`` or ``"holdout"`` (corpus split and
    attack variants)."""
    rng = random.Random(seed)
    variant = part
    streams: list[Stream] = []
    if not attacks_only:
        streams += benign_population(corpus, jailbreaks(part), rng, users=scale.users, days=scale.days)
    if benign_only:
        return streams
    for family, queries in ATTACK_QUERIES.items():
        n = max(25, round(queries * scale.attack_scale))
        for i in range(scale.attackers):
            streams.append(
                attack_stream(
                    f"att-{family}-{i:02d}", family, corpus, rng, queries=n, days=scale.days, variant=variant
                )
            )
    per_day = max(1, scale.mixed_queries // 3)
    for family in (*MIXED_FAMILIES, "none"):
        for share in SHARES if family != "none" else (0.0,):
            for i in range(scale.mixed):
                name = f"mix-{family}-{round(share * 100):02d}-{i}"
                base = power_user(name, corpus, rng, scale.days, (per_day, per_day))
                base.events = base.events[: scale.mixed_queries]
                if family == "none":
                    base.kind, base.role = "mixed:none:0", "mixed"
                    base.attack = [False] * len(base.events)
                    streams.append(base)
                else:
                    streams.append(mixed_stream(base, family, share, corpus, rng, variant))
    composer = Composer(corpus, rng)

    def benign_query(client: Client) -> tuple[str, dict[str, object]]:
        return "/v1/chat/completions", chat_body(client, composer.turn(None))

    campaigns = (
        ("camp-template", "template", 0.0, False),
        ("camp-coverage", "coverage", 0.0, False),
        ("camp-hydra", "template", 0.5, False),
        ("camp-coverage-poisson", "coverage", 0.0, True),  # no machine cadence
    )
    for group, family, blend, poisson in campaigns:
        streams += campaign_streams(
            group,
            family,
            corpus,
            rng,
            accounts=scale.campaign_accounts,
            per_day=scale.campaign_per_day,
            days=scale.campaign_days,
            blend=blend,
            benign=benign_query,
            variant=variant,
            poisson=poisson,
        )
    return streams

"""The multi-account campaign detector: detection, benign null and cost (a script, not a test).

    python -m benchmarks.campaign            # the figures in docs/detectors.md
    python -m benchmarks.campaign --quick    # a smaller population
    python -m benchmarks.campaign --edge     # with head and tail families (edge=4)

Traffic comes from the detection benchmark's generators (``benchmarks.detection``): a benign
population of one tenant (conversational users composed from chatterbot-corpus, power users,
jailbreak attempts, legitimate logit_bias users; random addresses and common client libraries),
and campaigns split over many accounts with one shared client library (``campaign_streams``).
Every account is in the same tenant (one issuer for everyone: the hardest grouping, the whole
population is one group).

Reported:

* **detection**: for each campaign, mixed into the benign population, the campaign queries
  served before the detector first scores a campaign request at the flag level (0.5), as a share
  of the campaign, and how many of its accounts were scored at the flag level at least once;
* **benign null**: benign client-days, client-days with a campaign score at the flag level, the
  highest benign score, the largest benign family (members against the null's Poisson mean),
  and the measured ``p_member`` (:func:`benign_member_rate`);
* **cost**: the median added per request by the campaign detector once the shared text features
  are computed (they are shared with the other text detectors), after 10 and after 100,000
  earlier requests; and the default set's own median for comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from distillguard.detectors import Observation
from distillguard.detectors._text import features, prompt_text
from distillguard.detectors.campaign import CampaignDetector, benign_member_rate
from distillguard.detectors.defaults import default_detectors
from distillguard.identity import Identity
from distillguard.query import parse_query

from .detection.attacks import campaign_streams
from .detection.benign import benign_population
from .detection.corpora import HOLDOUT_TOPICS, TUNING_TOPICS, jailbreaks, load_corpus
from .detection.streams import DAY, Stream

TENANT = "https://issuer.example.com/"


@dataclass(frozen=True)
class Request:
    """One request of a stream, as the detector sees it."""

    obs: Observation
    client: str
    role: str


def requests(streams: Iterable[Stream]) -> list[Request]:
    """Every event of ``streams`` as an observation, in time order."""
    out = []
    for stream in streams:
        identity = Identity(client_id=stream.name, tenant=TENANT)
        for ts, route, body in stream.events:
            obs = Observation(
                identity=identity,
                timestamp=ts,
                method="POST",
                route=route,
                query=parse_query(json.dumps(body).encode()),
                client_address=stream.client.ip,
                user_agent=stream.client.agent,
            )
            out.append(Request(obs, stream.name, stream.role))
    out.sort(key=lambda r: r.obs.timestamp)
    return out


def run(reqs: list[Request], **options: Any) -> dict[str, object]:
    """A fresh detector with ``options`` over ``reqs``: detection and false-positive figures."""
    det = CampaignDetector(**options)
    served = 0
    first: int | None = None
    flagged: set[str] = set()
    campaign_accounts: set[str] = set()
    benign_days: set[tuple[str, int]] = set()
    benign_flag_days: set[tuple[str, int]] = set()
    benign_max = 0.0
    for r in reqs:
        score = det.score(r.obs).score
        if r.role == "campaign":
            served += 1
            campaign_accounts.add(r.client)
            if score >= 0.5:
                flagged.add(r.client)
                if first is None:
                    first = served
        else:
            day = (r.client, int(r.obs.timestamp // DAY))
            benign_days.add(day)
            benign_max = max(benign_max, score)
            if score >= 0.5:
                benign_flag_days.add(day)
    largest = max(
        (f for f in det.families._states.values() if f.accounts >= 3),
        key=lambda f: f.accounts / max(f.expected / det.dispersion, 1e-9),
        default=None,
    )
    return {
        "campaign_queries": served,
        "accounts": len(campaign_accounts),
        "served_before_flag": first,
        "share_before_flag": None if first is None or not served else first / served,
        "accounts_flagged": len(flagged),
        "benign_client_days": len(benign_days),
        "benign_flagged_client_days": len(benign_flag_days),
        "benign_max_score": benign_max,
        "largest_family": None
        if largest is None
        else {
            "members": largest.accounts,
            "poisson_mean": largest.expected / det.dispersion,
        },
    }


def cost(history: int, repeats: int, seed: int = 3) -> dict[str, float]:
    """Median microseconds per request: the campaign detector after the shared features, after
    10 and after ``history`` earlier requests; and the default set (features included)."""
    corpus = load_corpus("english", TUNING_TOPICS)
    rng = random.Random(seed)
    pool = benign_population(corpus, jailbreaks("tuning"), rng, users=400, days=2)
    reqs = requests(pool)
    bodies = [
        json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt_text(r.obs.query)}]})
        for r in reqs
    ]

    agents = sorted({r.obs.user_agent or "" for r in reqs})

    def fresh(start: int, n: int, prefix: str) -> list[Observation]:
        """``n`` requests of 50 accounts, each with a stable address and user agent."""
        out = []
        for i in range(n):
            out.append(
                Observation(
                    identity=Identity(client_id=f"{prefix}-{i % 50}", tenant=TENANT),
                    timestamp=1e9 + start + i,
                    method="POST",
                    route="/v1/chat/completions",
                    query=parse_query(bodies[(start + i) % len(bodies)].encode()),
                    client_address=f"198.51.{i % 50}.{i % 50 + 1}",
                    user_agent=agents[i % 50 % len(agents)],
                )
            )
        return out

    young, old = CampaignDetector(), CampaignDetector()
    for i in range(history):
        r = reqs[i % len(reqs)]
        old.score(r.obs)
    for det in (young, old):
        for o in fresh(0, 10, "probe"):
            det.score(o)
    results: dict[str, list[float]] = {"features": [], "young": [], "old": [], "defaults": []}
    defaults = default_detectors()
    for rep in range(repeats):
        for key in ("features", "young", "old", "defaults"):
            batch = fresh(1000 + rep * 997, 300, "probe")
            start = time.perf_counter()
            if key == "features":
                for o in batch:
                    f = features(o.query)
                    _ = f.skeleton
            elif key == "defaults":
                for o in batch:
                    for d in defaults:
                        d.score(o)
            else:
                det = young if key == "young" else old
                for o in batch:
                    f = features(o.query)
                    _ = f.skeleton
                    det.score(o)
            results[key].append((time.perf_counter() - start) / len(batch) * 1e6)
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "campaign_after_10_us": med["young"] - med["features"],
        f"campaign_after_{history}_us": med["old"] - med["features"],
        "default_set_us": med["defaults"],
    }


def main(argv: list[str] | None = None) -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller benign population")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--edge", action="store_true", help="head and tail families too (edge=4, p_member=0.12)"
    )
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"edge": 4, "p_member": 0.12} if args.edge else {}
    users = 600 if args.quick else 3000
    corpus = load_corpus("english", TUNING_TOPICS)
    holdout = load_corpus("english", HOLDOUT_TOPICS)
    rng = random.Random(args.seed)
    benign = benign_population(corpus, jailbreaks("tuning"), rng, users=users, days=2)
    benign_reqs = requests(benign)
    report: dict[str, object] = {"benign_users": users, "options": options}
    per_client: dict[str, list[str]] = {}
    for r in benign_reqs:
        per_client.setdefault(r.client, []).append(prompt_text(r.obs.query))
    report["p_member_measured"] = benign_member_rate(per_client.values(), edge=int(options.get("edge", 0)))
    report["benign_only"] = run(benign_reqs, **options)
    scenarios = {
        "template, 24 accounts x 40": dict(corpus=corpus, accounts=24, per_day=40, variant="tuning"),
        "template (holdout phrasing), 24 x 40": dict(
            corpus=holdout, accounts=24, per_day=40, variant="holdout"
        ),
        "template, 100 accounts x 10": dict(corpus=corpus, accounts=100, per_day=10, variant="tuning"),
        "template, 20 accounts x 6": dict(corpus=corpus, accounts=20, per_day=6, variant="tuning"),
        "coverage, 24 accounts x 40": dict(
            corpus=corpus, accounts=24, per_day=40, variant="tuning", attack="coverage"
        ),
        "random words, 24 accounts x 40": dict(
            corpus=corpus, accounts=24, per_day=40, variant="tuning", attack="random_words"
        ),
    }
    campaigns: dict[str, object] = {}
    for name, spec in scenarios.items():
        crng = random.Random(zlib.crc32(name.encode()) + args.seed)
        streams = campaign_streams(
            "camp",
            str(spec.get("attack", "template")),
            spec["corpus"],  # type: ignore[arg-type]
            crng,
            accounts=int(spec["accounts"]),  # type: ignore[call-overload]
            per_day=int(spec["per_day"]),  # type: ignore[call-overload]
            days=1,
            variant=str(spec["variant"]),
        )
        campaigns[name] = run(
            sorted(benign_reqs + requests(streams), key=lambda r: r.obs.timestamp), **options
        )
    report["campaigns"] = campaigns
    report["cost"] = cost(20_000 if args.quick else 100_000, 5 if args.quick else 9)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""``python -m benchmarks.detection.knockoff_bound``: how soon natural-data Knockoff sampling
has stolen the benchmark's classifier, and how far a per-client statistic can tell it apart.

For each part's victim (:mod:`benchmarks.detection.vectors`), this script measures:

1. the *agreement curve*: a softmax-regression copy (the attackers' substitute, 20 epochs)
   trained on ``N`` natural samples of the whole mixture labelled by the victim, and the share
   of 1,000 fresh natural inputs on which it agrees with the victim. The target of section 5
   of the detection reference is an alarm before the copy agrees on 80%;
2. the *diversity* of a client's first 30 queries: their mean squared pairwise distance in
   population z-units over ``2 * dim`` (1 for independent draws from the whole population,
   less for a client focused on a few classes), for every benign client of the benchmark's
   population and for Knockoff clients. A per-client detector of "queries as diverse as the
   population" can separate the two only where every Knockoff client scores above every
   benign one.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Sequence

from .vectors import SPACES, Substitute, Vector, Victim, benign_stream

SIZES = (10, 20, 40, 100)
FIRST = 30


def agreement(victim: Victim, rng: random.Random, size: int, tests: Sequence[Vector]) -> float:
    """The share of ``tests`` on which a copy trained on ``size`` natural samples agrees."""
    xs = [victim.sample(rng) for _ in range(size)]
    copy = Substitute(victim.dim, victim.classes)
    copy.fit(xs, [victim.predict(x) for x in xs], epochs=20)
    agree = 0
    for x in tests:
        probs = copy.probs(x)
        agree += probs.index(max(probs)) == victim.predict(x)
    return agree / len(tests)


def diversity(victim: Victim, queries: Sequence[Vector], mean: Vector, sd: Vector) -> float:
    """The mean squared pairwise distance of ``queries`` in z-units, over ``2 * dim``."""
    zs = [[(v - m) / s for v, m, s in zip(x, mean, sd, strict=True)] for x in queries]
    total, pairs = 0.0, 0
    for i, a in enumerate(zs):
        for b in zs[:i]:
            d = sum((u - w) ** 2 for u, w in zip(a, b, strict=True))
            if d > 0.0:  # exact re-sends carry nothing
                total, pairs = total + d, pairs + 1
    return total / pairs / (2 * victim.dim) if pairs else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="benign clients per part")
    args = parser.parse_args(argv)
    for part, (seed, dim, classes) in SPACES.items():
        victim = Victim.build(seed, dim, classes)
        rng = random.Random(5)
        tests = [victim.sample(rng) for _ in range(1000)]
        curve = ", ".join(f"{n} queries {agreement(victim, rng, n, tests):.0%}" for n in SIZES)
        print(
            f"{part} ({classes} classes in {dim} dimensions): the copy agrees with the victim after {curve}"
        )
        population = [victim.sample(rng) for _ in range(4000)]
        mean = [statistics.fmean(x[i] for x in population) for i in range(dim)]
        sd = [statistics.pstdev([x[i] for x in population]) for i in range(dim)]
        benign = []
        for i in range(args.users):
            events = benign_stream(f"vuser-{i:04d}", victim, rng, 6).events
            if len(events) >= FIRST:
                benign.append(diversity(victim, [e[2]["inputs"][0] for e in events[:FIRST]], mean, sd))
        knockoff = [
            diversity(victim, [victim.sample(rng) for _ in range(FIRST)], mean, sd) for _ in range(20)
        ]
        above = sum(1 for k in knockoff if k > max(benign))
        print(
            f"  diversity of the first {FIRST} queries: benign median {statistics.median(benign):.3f}, "
            f"max {max(benign):.3f} ({len(benign)} clients); "
            f"Knockoff median {statistics.median(knockoff):.3f}, "
            f"min {min(knockoff):.3f}; Knockoff clients above every benign one: {above}/{len(knockoff)}"
        )


if __name__ == "__main__":
    main()

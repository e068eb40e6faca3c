"""Classifier extraction on a vector (``predict``) endpoint: the PRADA scenario.

**Victim.** A classifier over a fixed, seeded Gaussian mixture (``classes`` classes in ``dim``
dimensions, each class with its own mean and per-feature scales); the victim answers with the
Bayes-optimal label. Requests are ``{"inputs": [[x1, ..., xd]]}`` bodies on ``/v1/predict``
(what :func:`distillguard.query.parse_query` reads as a ``vector`` query).

**Benign clients** send natural samples of the mixture, mostly from the few classes of their own
use case, with the repetition real apps show: exact re-sends (retries, refreshed pages) and
edited records (one to three fields corrected and sent again). A tenth of them are batch
scorers: a few hundred fresh records at machine pace.

**Attacks** (one client each):

* ``vec_jbda``: Papernot et al. 2017 Jacobian-based dataset augmentation. A few natural seeds;
  each round, every known point ``x`` adds ``x + lambda * sign(grad_x F_sub(x)[O(x)])``, where
  ``F_sub`` is the attacker's substitute (softmax regression retrained on the labels so far),
  ``O(x)`` the victim's label and ``lambda`` flips sign every ``tau`` rounds;
* ``vec_jbda_tr``: PRADA's JbDA-TR, the same step towards a random target class;
* ``vec_ifgsm``: PRADA's T-RND-IFGSM, iterative FGSM steps (``eps / steps`` each, clipped to
  the ``eps`` ball) towards a random target class, the final point queried;
* ``vec_random``: uniform random points in the data's bounding box;
* ``vec_knockoff``: natural samples of the whole distribution, each once (KnockoffNets /
  CopycatCNN with natural data: query by query a benign client; per-client detectors are not
  expected to catch it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .streams import DAY, START, Client, Stream

__all__ = [
    "VECTOR_ATTACKS",
    "VECTOR_PATH",
    "VECTOR_TARGETS",
    "VECTOR_WITHIN",
    "Victim",
    "VectorScale",
    "vector_population",
]

VECTOR_PATH = "/v1/predict"
VECTOR_ATTACKS = ("vec_jbda", "vec_jbda_tr", "vec_ifgsm", "vec_random", "vec_knockoff")
VECTOR_WITHIN = {name: 100 for name in VECTOR_ATTACKS}
"""The "detected within N queries" budget (section 5 of the detection reference)."""
VECTOR_TARGETS = {
    **{name: "100% within 100, median <= 50, 0 FP" for name in VECTOR_ATTACKS},
    "vec_knockoff": "(natural data: not expected per client)",
}

Vector = list[float]


@dataclass(frozen=True)
class Victim:
    """A seeded Gaussian mixture and its Bayes classifier."""

    dim: int
    classes: int
    means: tuple[tuple[float, ...], ...]
    scales: tuple[tuple[float, ...], ...]

    @classmethod
    def build(cls, seed: int, dim: int, classes: int) -> Victim:
        """The mixture of ``classes`` classes in ``dim`` dimensions drawn from ``seed``."""
        rng = random.Random(seed)
        means = tuple(tuple(rng.gauss(0.0, 1.2) for _ in range(dim)) for _ in range(classes))
        scales = tuple(tuple(rng.uniform(0.5, 1.2) for _ in range(dim)) for _ in range(classes))
        return cls(dim, classes, means, scales)

    def sample(self, rng: random.Random, label: int | None = None) -> Vector:
        """A natural sample (of class ``label``, or of a random class)."""
        c = rng.randrange(self.classes) if label is None else label
        return [rng.gauss(m, s) for m, s in zip(self.means[c], self.scales[c], strict=True)]

    def predict(self, x: Vector) -> int:
        """The victim's label: the most likely class."""

        def loglik(c: int) -> float:
            return -sum(
                ((v - m) / s) ** 2 / 2 + math.log(s)
                for v, m, s in zip(x, self.means[c], self.scales[c], strict=True)
            )

        return max(range(self.classes), key=loglik)

    def bounds(self) -> tuple[Vector, Vector]:
        """Per-feature bounds of the data (class means +- 3 scales)."""
        lo = [
            min(m[i] - 3 * s[i] for m, s in zip(self.means, self.scales, strict=True))
            for i in range(self.dim)
        ]
        hi = [
            max(m[i] + 3 * s[i] for m, s in zip(self.means, self.scales, strict=True))
            for i in range(self.dim)
        ]
        return lo, hi


class Substitute:
    """The attacker's substitute: softmax regression trained by gradient steps on the labels."""

    def __init__(self, dim: int, classes: int) -> None:
        self.w = [[0.0] * dim for _ in range(classes)]
        self.b = [0.0] * classes

    def probs(self, x: Vector) -> list[float]:
        """Class probabilities."""
        z = [
            sum(wi * xi for wi, xi in zip(w, x, strict=True)) + b for w, b in zip(self.w, self.b, strict=True)
        ]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        total = sum(e)
        return [v / total for v in e]

    def fit(self, xs: list[Vector], ys: list[int], epochs: int = 4, lr: float = 0.05) -> None:
        """A few epochs of stochastic gradient descent on the cross-entropy."""
        for _ in range(epochs):
            for x, y in zip(xs, ys, strict=True):
                p = self.probs(x)
                for c, w in enumerate(self.w):
                    g = p[c] - (1.0 if c == y else 0.0)
                    if abs(g) > 1e-4:
                        step = lr * g
                        for i, xi in enumerate(x):
                            w[i] -= step * xi
                        self.b[c] -= step

    def grad_sign(self, x: Vector, target: int) -> Vector:
        """``sign(grad_x log p_target(x))`` (``w_t - sum_j p_j w_j``)."""
        p = self.probs(x)
        dim = len(x)
        mean = [sum(p[c] * self.w[c][i] for c in range(len(p))) for i in range(dim)]
        return [
            1.0 if wt > m else -1.0 if wt < m else 0.0 for wt, m in zip(self.w[target], mean, strict=True)
        ]


def _augmenting(victim: Victim, rng: random.Random, queries: int, mode: str) -> list[Vector]:
    """Papernot-style rounds: seeds, then one synthetic child per known point each round."""
    seeds = [victim.sample(rng, c % victim.classes) for c in range(rng.choice((10, 16, 20)))]
    scale = rng.choice((0.1, 0.2, 0.3))
    tau = 3
    steps = rng.choice((3, 5, 10))
    known, labels = list(seeds), [victim.predict(x) for x in seeds]
    sent = list(seeds)
    sub = Substitute(victim.dim, victim.classes)
    rnd = 0
    while len(sent) < queries:
        sub.fit(known, labels)
        lam = scale * (-1.0 if (rnd // tau) % 2 else 1.0)
        children = []
        for x, y in zip(known, labels, strict=True):
            if mode == "jbda":
                children.append([v + lam * g for v, g in zip(x, sub.grad_sign(x, y), strict=True)])
                continue
            target = rng.choice([c for c in range(victim.classes) if c != y])
            if mode == "jbda_tr":
                children.append([v + scale * g for v, g in zip(x, sub.grad_sign(x, target), strict=True)])
                continue
            z = list(x)
            for _ in range(steps):  # T-RND-IFGSM: eps / steps per step, clipped to the eps ball
                g = sub.grad_sign(z, target)
                z = [
                    min(xi + scale, max(xi - scale, zi + scale / steps * gi))
                    for xi, zi, gi in zip(x, z, g, strict=True)
                ]
            children.append(z)
            if len(sent) + len(children) >= queries:
                break
        children = children[: queries - len(sent)]
        sent.extend(children)
        known.extend(children)
        labels.extend(victim.predict(x) for x in children)
        rnd += 1
    return sent


def _random(victim: Victim, rng: random.Random, queries: int, mode: str) -> list[Vector]:
    lo, hi = victim.bounds()
    return [[rng.uniform(a, b) for a, b in zip(lo, hi, strict=True)] for _ in range(queries)]


def _knockoff(victim: Victim, rng: random.Random, queries: int, mode: str) -> list[Vector]:
    return [victim.sample(rng) for _ in range(queries)]


ATTACKS: dict[str, tuple[Callable[[Victim, random.Random, int, str], list[Vector]], str]] = {
    "vec_jbda": (_augmenting, "jbda"),
    "vec_jbda_tr": (_augmenting, "jbda_tr"),
    "vec_ifgsm": (_augmenting, "ifgsm"),
    "vec_random": (_random, ""),
    "vec_knockoff": (_knockoff, ""),
}


def _body(x: Vector) -> dict[str, Any]:
    return {"inputs": [[round(v, 4) for v in x]]}


def attack_stream(
    name: str, attack: str, victim: Victim, rng: random.Random, queries: int, days: int
) -> Stream:
    """One client running ``attack``: a request every few seconds, around the clock."""
    make, mode = ATTACKS[attack]
    stream = Stream(Client.random(name, rng), f"attack:{attack}", "attack")
    t = START + rng.uniform(0, max(1, days - 2)) * DAY
    gap = rng.uniform(1.0, 10.0)
    for x in make(victim, rng, queries, mode):
        stream.events.append((t, VECTOR_PATH, _body(x)))
        t += rng.uniform(0.5, 1.5) * gap
    return stream


def benign_stream(name: str, victim: Victim, rng: random.Random, days: int) -> Stream:
    """A benign app: natural records of its own few classes, with re-sends and edited records;
    one in ten is a batch scorer (a few hundred fresh records at machine pace, once a day)."""
    stream = Stream(Client.random(name, rng), "benign:vector", "benign")
    focus = rng.sample(range(victim.classes), rng.randint(1, 4))
    repeat, edit = rng.uniform(0.0, 0.12), rng.uniform(0.0, 0.08)
    batch = rng.random() < 0.1
    tz = rng.randint(-8, 9)
    recent: list[Vector] = []
    for day in range(days):
        if rng.random() > (0.9 if batch else rng.uniform(0.4, 0.9)):
            continue
        sessions = [1] if batch else [0] * rng.choice((1, 2, 3, 4))
        for _ in sessions:
            t = START + day * DAY + (rng.uniform(7.0, 22.0) - tz) * 3600.0
            for _ in range(rng.randint(100, 300) if batch else rng.randint(3, 40)):
                r = rng.random()
                if recent and r < repeat:
                    x = list(rng.choice(recent[-20:]))
                elif recent and r < repeat + edit:
                    x = list(rng.choice(recent[-20:]))
                    fresh = victim.sample(rng, rng.choice(focus))
                    for i in rng.sample(range(victim.dim), rng.randint(1, 3)):
                        x[i] = fresh[i]
                else:
                    label = rng.choice(focus) if rng.random() < 0.85 else None
                    x = victim.sample(rng, label)
                recent.append(x)
                stream.events.append((t, VECTOR_PATH, _body(x)))
                t += rng.uniform(0.5, 3.0) if batch else max(1.0, rng.lognormvariate(math.log(25.0), 1.0))
    return stream


@dataclass(frozen=True)
class VectorScale:
    """How big a vector run is."""

    users: int = 200
    days: int = 6
    attackers: int = 20
    queries: int = 200

    @classmethod
    def quick(cls) -> VectorScale:
        """A tiny run (seconds), for the smoke test."""
        return cls(users=10, days=2, attackers=2, queries=60)

    def dim_note(self, part: str) -> str:
        """What one part's victim and population look like, for the report."""
        _, dim, classes = SPACES[part]
        return (
            f"{classes} classes in {dim} dimensions; {self.users} benign clients over {self.days} days, "
            f"{self.attackers} clients per attack, {self.queries} queries each"
        )


SPACES = {"tuning": (7, 32, 10), "holdout": (11, 48, 6)}
"""``(victim seed, dim, classes)`` of each part: the holdout is another mixture and shape."""


def vector_population(part: str, seed: int, scale: VectorScale) -> list[Stream]:
    """Benign vector clients and ``scale.attackers`` clients of each attack."""
    victim_seed, dim, classes = SPACES[part]
    victim = Victim.build(victim_seed, dim, classes)
    rng = random.Random(seed)
    streams = [benign_stream(f"vuser-{i:04d}", victim, rng, scale.days) for i in range(scale.users)]
    for attack in VECTOR_ATTACKS:
        for i in range(scale.attackers):
            streams.append(
                attack_stream(f"att-{attack}-{i:02d}", attack, victim, rng, scale.queries, scale.days)
            )
    return streams

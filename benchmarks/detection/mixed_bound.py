"""``python -m benchmarks.detection.mixed_bound``: how far a coverage sweep mixed into a heavy
user's traffic is separable at all, whatever the per-client detector.

The mixed-traffic rows replace a share of a heavy user's requests with a coverage sweep over
the *same* corpus the user draws from. This script measures, on the benchmark's own streams
(tuning population, seed 1, and the holdout, seed 2001):

1. the mean-embedding shift: ``||mean(attack) - mean(user)||^2 / tr(Cov(user))`` over the
   hashed embedding of :mod:`distillguard.detectors._text` (a linear-kernel MMD's signal); for a
   share ``s`` of an ``n``-query window against a perfect reference, the signal-to-noise ratio
   is about ``s^2 * ratio * n``;
2. an optimistic bound for any per-query test: a likelihood ratio of the attack queries
   against the heavy users' own queries over the shape features (word count, content-word
   count), *fitted on the very streams it scores* (in-sample), summed as a mixture
   log-likelihood ratio over each client's first 1,500 requests at the true share. The mixed
   clients are separable only where their statistic exceeds every benign heavy user's.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from distillguard.detectors._text import DIM, TextFeatures

from .scenarios import Scale, holdout_corpus, population, tuning_corpus
from .streams import Stream

Shape = tuple[int, int]


def _prompt(body: dict[str, object]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        return str(messages[-1].get("content", ""))
    return str(body.get("prompt", ""))


def _shape(text: str) -> Shape:
    feats = TextFeatures(text)
    return min(len(feats.words), 40) // 2, min(len(feats.content), 12)


def _split(streams: Sequence[Stream]) -> tuple[list[str], list[str]]:
    """The user's own prompts and the attack prompts of the mixed coverage clients."""
    user: list[str] = []
    attack: list[str] = []
    for s in streams:
        if s.kind.startswith("mixed:coverage"):
            for (_, _, body), is_attack in zip(s.events, s.attack, strict=True):
                (attack if is_attack else user).append(_prompt(body))
    return user, attack


def embedding_shift(user: Sequence[str], attack: Sequence[str]) -> float:
    """``||mean(attack) - mean(user)||^2 / tr(Cov(user))`` of the hashed embedding."""
    u = [TextFeatures(t).embedding for t in user]
    a = [TextFeatures(t).embedding for t in attack]
    mu = [sum(v[i] for v in u) / len(u) for i in range(DIM)]
    ma = [sum(v[i] for v in a) / len(a) for i in range(DIM)]
    trace = sum(sum((v[i] - mu[i]) ** 2 for i in range(DIM)) for v in u) / len(u)
    return sum((x - y) ** 2 for x, y in zip(ma, mu, strict=True)) / trace


def likelihood_ratio(user: Sequence[str], attack: Sequence[str]) -> Callable[[str], float]:
    """The attack/user likelihood ratio of a prompt's shape (add-half smoothing)."""
    nu, na = Counter(map(_shape, user)), Counter(map(_shape, attack))
    tu, ta = len(user), len(attack)

    def lr(text: str) -> float:
        k = _shape(text)
        return ((na[k] + 0.5) / ta) / ((nu[k] + 0.5) / tu)

    return lr


def mixture_llr(stream: Stream, lr: Callable[[str], float], share: float) -> float:
    """Sum over the first 1,500 requests of ``log(1 - share + share * LR)``."""
    return sum(math.log(1 - share + share * lr(_prompt(body))) for _, _, body in stream.events[:1500])


def main() -> None:
    runs = (
        ("tuning", population(tuning_corpus(), "tuning", 1, Scale())),
        ("holdout", population(holdout_corpus(random.Random(2001)), "holdout", 2001, Scale().holdout())),
    )
    user, attack = _split(runs[0][1])
    lr = likelihood_ratio(user, attack)  # fitted on the tuning streams, in sample
    for part, streams in runs:
        u, a = _split(streams)
        ratio = embedding_shift(u, a)
        print(f"{part}: embedding shift ratio {ratio:.4f} ({len(u)} user, {len(a)} attack prompts)")
        for share in (0.05, 0.10):
            rows: dict[str, list[float]] = defaultdict(list)
            for s in streams:
                if len(s.events) < 300:
                    continue
                if s.kind in (f"mixed:coverage:{round(share * 100)}", "mixed:none:0", "benign:power"):
                    rows[s.kind].append(mixture_llr(s, lr, share))
            benign = rows["benign:power"] + rows["mixed:none:0"]
            mixed = rows[f"mixed:coverage:{round(share * 100)}"]
            above = sum(1 for x in mixed if x > max(benign))
            print(
                f"  share {share:.0%}: mixed {sorted(round(x, 1) for x in mixed)}; benign heavy users "
                f"max {max(benign):.1f} (of {len(benign)}); separable {above}/{len(mixed)}"
            )


if __name__ == "__main__":
    main()

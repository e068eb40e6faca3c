"""Token estimates: what a request is charged before the model answers.

The estimate is deliberately simple and fast: prompt characters divided by
``LimitConfig.chars_per_token`` (4 by default, about right for English with GPT-style
tokenizers), plus the most the model may produce: ``max_tokens`` (or ``max_completion_tokens``,
or ``LimitConfig.default_max_tokens`` when absent) times ``n`` times the number of prompts.
After the response the charge is reconciled with the real ``usage``
(:mod:`distillguard.limiting.budget`), so the estimate only decides admission.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..query import Query

__all__ = ["TokenEstimate", "estimate_tokens", "text_tokens"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenEstimate:
    """The tokens a request is charged before the call.

    Attributes:
        prompt: estimated prompt tokens.
        completion: the most completion tokens the request allows.
    """

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        """``prompt + completion``."""
        return self.prompt + self.completion


def text_tokens(text: str, chars_per_token: float) -> int:
    """Estimated tokens of ``text`` (at least 1 for non-empty text)."""
    return math.ceil(len(text) / chars_per_token) if text else 0


def estimate_tokens(query: Query, *, chars_per_token: float, default_max_tokens: int) -> TokenEstimate | None:
    """The estimate for ``query``, or ``None`` when it is not a model query (no tokens)."""
    if query.kind not in ("chat", "completion", "embedding"):
        return None
    prompt = text_tokens(query.text, chars_per_token)
    if query.kind == "embedding":
        return TokenEstimate(prompt=max(prompt, 1), completion=0)
    budget = (
        query.max_tokens if query.max_tokens is not None and query.max_tokens >= 0 else default_max_tokens
    )
    prompts = query.inputs if query.kind == "completion" else 1
    return TokenEstimate(prompt=prompt, completion=budget * query.n * prompts)

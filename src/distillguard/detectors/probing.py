"""Parameter-probing detector (``parameter_probe``).

**Signal.** Logit-recovery attacks read the model's output distribution through the API's
sampling parameters rather than its text: ``logprobs``/``top_logprobs`` together with a large
``logit_bias`` on a *rotating* set of token ids that sweeps the vocabulary, a tiny
``max_tokens`` (1-2), and sweeps over ``n`` and ``temperature``. Each request earns probe
points, kept in a ring over the client's last ``window`` requests:

* a ``logit_bias`` map (token ids and bias values) that is new for this client (not among its
  last ``window`` bias maps: rotating ids, or bias values searched on the same ids): 0.6, plus
  0.25 with log probabilities and 0.15 with ``max_tokens <= 2``. A legitimate user with a fixed
  ``logit_bias`` (banning or forcing a few tokens) repeats the same map and earns points only
  once;
* ``n >= n_sweep`` with ``max_tokens <= 16``: 0.3; a temperature not among the client's last
  eight: 0.2 (sampling sweeps; moderate on their own).

The score is the mean points per request divided by 0.6, scaled by ``min(1, requests / 8)``.

**Anchor.** Carlini et al., "Stealing Part of a Production Language Model" (ICML 2024): top-5
logprobs plus logit_bias recover a logit row in ~0.25 queries per logit, logit_bias alone in
3.7-10; the mitigation they discuss is never serving logit_bias with logprobs. No published
detector exists; target: every probe within 20 requests, no false positive on fixed-bias users.

**Cost.** O(size of logit_bias) per request (one sort is already done by the parser, one tuple
hash), an ``array`` scan over ``window`` values. State: ~300 bytes per client at the default
window of 32 (the ring of ``logit_bias`` keys, 128 bytes more, is made on the client's first
``logit_bias``).
"""

from __future__ import annotations

from array import array

from ._base import check_range
from ._protocol import DetectorResult, Observation
from ._state import LRUStates

__all__ = ["ParameterProbeDetector"]

_TEMPS = 8
_EMPTY = DetectorResult("parameter_probe", 0.0)


class _State:
    __slots__ = ("biases", "n", "points", "pos", "temps", "total")

    def __init__(self, window: int) -> None:
        self.biases: array[int] | None = None  # made on the client's first logit_bias
        self.points = bytearray(window)
        self.temps = bytearray(_TEMPS)
        self.total = 0
        self.n = 0
        self.pos = 0


class ParameterProbeDetector:
    """Scores logprob/logit_bias probing and sampling sweeps in a client's requests.

    Args:
        window: how many recent requests are kept.
        n_sweep: ``n`` at or above this (with a small ``max_tokens``) counts as a sampling sweep.
        min_bias: ``logit_bias`` entries with a smaller absolute bias are ignored.
        max_clients: the cap on tracked clients.
    """

    name = "parameter_probe"

    def __init__(
        self, *, window: int = 32, n_sweep: int = 4, min_bias: float = 1.0, max_clients: int = 50_000
    ) -> None:
        check_range("window", window, 8, 1024)
        check_range("n_sweep", n_sweep, 2, 128)
        check_range("min_bias", min_bias, 0.0, 100.0)
        self.window = window
        self.n_sweep = n_sweep
        self.min_bias = min_bias
        self.states: LRUStates[_State] = LRUStates(lambda: _State(window), max_clients)

    def score(self, observation: Observation) -> DetectorResult:
        """Add the request's probe points and score the client's recent mean."""
        q = observation.query
        if q.kind not in ("chat", "completion"):
            return _EMPTY
        state = self.states.get(observation.identity.client_id)
        points = 0.0
        tiny = q.max_tokens is not None and q.max_tokens <= 2
        bias_key = 0
        if q.logit_bias:
            biased = tuple((tok, round(bias, 2)) for tok, bias in q.logit_bias if abs(bias) >= self.min_bias)
            if biased:
                bias_key = (hash(biased) & 0xFFFFFFFF) or 1
                biases = state.biases
                if biases is None:
                    biases = state.biases = array("I", bytes(4 * self.window))
                if bias_key not in biases:
                    points = 0.6 + (0.25 if q.logprobs else 0.0) + (0.15 if tiny else 0.0)
                biases[state.pos] = bias_key
        if q.n >= self.n_sweep and (q.max_tokens is not None and q.max_tokens <= 16):
            points += 0.3
        if q.temperature is not None:
            code = min(255, int(q.temperature * 50)) + 1
            if code not in state.temps:
                if state.n > 0:
                    points += 0.2
                state.temps[state.n % _TEMPS] = code
        points = min(points, 1.0)
        pos = state.pos
        state.total += round(points * 100) - state.points[pos]
        state.points[pos] = round(points * 100)
        state.pos = (pos + 1) % self.window
        state.n = n = state.n + 1
        seen = n if n < self.window else self.window
        mean = state.total / (100 * seen)
        if mean <= 0.0:
            return _EMPTY
        score = min(1.0, mean / 0.6) * min(1.0, n / 8)
        reasons = ("rotating_logit_bias",) if bias_key else ("sampling_sweep",)
        return DetectorResult(self.name, score, reasons, {"probe_points": mean, "requests": float(n)})

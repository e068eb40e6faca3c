"""Parameter-probing detector (``parameter_probe``).

**Signal.** Logit-recovery attacks read the model's output distribution through the API's
sampling parameters rather than its text: ``logprobs``/``top_logprobs`` together with a large
``logit_bias`` on a *rotating* set of token ids that sweeps the vocabulary, a tiny
``max_tokens`` (1-2), and sweeps over ``n`` and ``temperature``. Each request earns probe
points, kept in a ring over the client's last ``window`` requests:

* a ``logit_bias`` map (token ids and bias values) that is new for this client (not among the
  last ``window`` *distinct* maps it sent: rotating ids, or bias values searched on the same
  ids): 0.6, plus 0.25 with log probabilities and 0.15 with ``max_tokens <= 2``. A legitimate
  user with a fixed ``logit_bias`` (banning or forcing a few tokens), or an app choosing among
  up to ``window`` fixed label sets, earns points once per map;
* ``n >= n_sweep`` with ``max_tokens <= 16``: 0.3; a temperature not among the client's last
  eight: 0.2 (sampling sweeps; moderate on their own).

The score is the mean points per request divided by 0.6, scaled by ``min(1, requests / 8)``.

A probe hidden in a stream of ordinary requests (one request in twenty) keeps that window mean
low, so the points of new ``logit_bias`` maps also go into a *probe mass* that decays by
``1 / horizon`` per request of the client (a count over its last ~``horizon`` requests): the
score is at least ``mass / (2 * sustained)``, the flag level (0.5) once ``sustained`` (8) new
maps have been sent within about ``horizon`` (256) requests. A probe never sends a map twice,
while an app sends its fixed maps again and again: each request with a known map multiplies the
mass by 0.9, so an app's first dozen label sets do not linger as a dozen probes. (A prober
that re-sends two known maps after each new one, among many ordinary requests, keeps the mass
below the flag level: the reuse cut is the price of not flagging apps.)

**Anchor.** Carlini et al., "Stealing Part of a Production Language Model" (ICML 2024): top-5
logprobs plus logit_bias recover a logit row in ~0.25 queries per logit, logit_bias alone in
3.7-10; the mitigation they discuss is never serving logit_bias with logprobs. No published
detector exists; target: every probe within 20 requests, no false positive on fixed-bias users.

**Cost.** O(size of logit_bias) per request (one sort is already done by the parser, one tuple
hash), an ``array`` scan over ``window`` values. State: ~300 bytes per client at the default
window of 32 (the ring of distinct ``logit_bias`` keys, 128 bytes more, is made on the
client's first ``logit_bias``).
"""

from __future__ import annotations

from array import array

from ._base import check_range
from ._protocol import DetectorResult, Observation
from ._state import LRUStates

__all__ = ["ParameterProbeDetector"]

_TEMPS = 8
_REUSE = 0.9  # the probe mass is multiplied by this when a known logit_bias map comes again
_EMPTY = DetectorResult("parameter_probe", 0.0)


class _State:
    __slots__ = ("biases", "bpos", "mass", "n", "points", "pos", "temps", "total")

    def __init__(self, window: int) -> None:
        self.biases: array[int] | None = None  # made on the client's first logit_bias
        self.bpos = 0  # where the next new logit_bias map goes in ``biases``
        self.points = bytearray(window)
        self.temps = bytearray(_TEMPS)
        self.total = 0
        self.mass = 0.0  # decayed count of new logit_bias maps (points), see the module docstring
        self.n = 0
        self.pos = 0


class ParameterProbeDetector:
    """Scores logprob/logit_bias probing and sampling sweeps in a client's requests.

    Args:
        window: how many recent requests are kept.
        n_sweep: ``n`` at or above this (with a small ``max_tokens``) counts as a sampling sweep.
        min_bias: ``logit_bias`` entries with a smaller absolute bias are ignored.
        horizon: the probe mass decays by ``1 / horizon`` per request (its memory, in requests).
        sustained: the probe mass (about that many new ``logit_bias`` maps within ``horizon``
            requests) at which the score reaches the flag level 0.5, however many ordinary
            requests surround them.
        max_clients: the cap on tracked clients.
    """

    name = "parameter_probe"
    shares_state = True

    def __init__(
        self,
        *,
        window: int = 32,
        n_sweep: int = 4,
        min_bias: float = 1.0,
        horizon: int = 256,
        sustained: float = 8.0,
        max_clients: int = 50_000,
    ) -> None:
        check_range("window", window, 8, 1024)
        check_range("n_sweep", n_sweep, 2, 128)
        check_range("min_bias", min_bias, 0.0, 100.0)
        check_range("horizon", horizon, 16, 1 << 20)
        check_range("sustained", sustained, 1.0, 10_000.0)
        self.window = window
        self._decay = 1.0 - 1.0 / horizon
        self._sustained = 2.0 * sustained
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
                    biases[state.bpos] = bias_key
                    state.bpos = (state.bpos + 1) % self.window
                elif state.mass:  # a map used again: an app's label set, never a probe's
                    state.mass *= _REUSE
        if state.mass or points:  # the new-map points, before the sampling-sweep ones
            mass = state.mass * self._decay + points
            state.mass = mass if mass >= 0.01 else 0.0
        if q.n >= self.n_sweep and (q.max_tokens is not None and q.max_tokens <= 16):
            points += 0.3
        if q.temperature is not None:
            # 1..255 (0 marks an empty slot): a negative or very high temperature (a server that
            # clamps it accepts any) must not make the detector fail, which would switch it off
            scaled = q.temperature * 50.0  # may overflow to infinity
            code = 1 + (int(scaled) if 0.0 <= scaled < 254.0 else 0 if scaled < 0.0 else 254)
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
        if mean <= 0.0 and state.mass < 0.5:
            return _EMPTY
        score = min(1.0, mean / 0.6) * min(1.0, n / 8)
        sustained = min(1.0, state.mass / self._sustained)
        if sustained > score:
            score = sustained
            reasons: tuple[str, ...] = ("sustained_logit_bias_rotation",)
        else:
            reasons = ("rotating_logit_bias",) if bias_key else ("sampling_sweep",)
        signals = {"probe_points": mean, "probe_mass": state.mass, "requests": float(n)}
        return DetectorResult(self.name, score, reasons, signals)

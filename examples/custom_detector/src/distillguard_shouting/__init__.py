"""An example distillguard detector: the share of a client's recent prompts written in capitals.

It shows the three things a detector does: keep bounded per-client state, score each request
from that state, and explain its score with short reasons (never prompt text).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from distillguard import DetectorResult, Observation

__all__ = ["ShoutingDetector"]


class ShoutingDetector:
    """Scores how many of a client's last ``window`` prompts are mostly upper case.

    Args:
        window: prompts remembered per client.
        threshold: the share of shouted prompts that scores 1.0 (lower shares scale linearly).
        max_clients: clients remembered (least recently seen are forgotten first).
    """

    name = "shouting"

    def __init__(self, window: int = 20, threshold: float = 0.8, max_clients: int = 10_000) -> None:
        if window < 1 or not 0.0 < threshold <= 1.0 or max_clients < 1:
            raise ValueError("window and max_clients must be positive, threshold in (0, 1]")
        self.window = window
        self.threshold = threshold
        self.max_clients = max_clients
        self._history: OrderedDict[str, deque[bool]] = OrderedDict()

    @staticmethod
    def _shouted(text: str) -> bool:
        letters = [c for c in text if c.isalpha()]
        return len(letters) >= 8 and sum(c.isupper() for c in letters) / len(letters) > 0.8

    def score(self, observation: Observation) -> DetectorResult:
        """Score one request from the client's recent prompts."""
        if not observation.query.is_text:
            return DetectorResult(self.name, 0.0)
        history = self._history.get(observation.client_id)
        if history is None:
            history = self._history[observation.client_id] = deque(maxlen=self.window)
            if len(self._history) > self.max_clients:
                self._history.popitem(last=False)
        else:
            self._history.move_to_end(observation.client_id)
        history.append(self._shouted(observation.query.text))
        share = sum(history) / len(history)
        score = min(1.0, share / self.threshold)
        return DetectorResult(
            self.name,
            score,
            ("shouting",) if score >= 0.5 else (),
            {"shouted_share": share, "prompts": float(len(history))},
        )

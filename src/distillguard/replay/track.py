"""What replay remembers about each client, bounded in size.

A :class:`ClientTrack` keeps the counts the report needs (requests, flags, active and flagged
UTC days), the highest score of each detector,
a risk-over-time :class:`Series` of at most :data:`SERIES_POINTS` points (peaks survive the
down-sampling), and the few features that link clients into campaigns (see
:mod:`distillguard.replay.campaigns`): the dominant prompt prefix and suffix, the regularity of
the inter-arrival times and the dominant request shape.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence

from ..query import Query

__all__ = ["SERIES_POINTS", "ClientTrack", "Series", "request_shape", "skeleton_keys"]

SERIES_POINTS = 240
"""Points kept per client for the risk plot."""

_MAX_KEYS = 64  # distinct prefixes / suffixes / shapes counted per client
_AFFIX_WORDS = 4


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


_DIGITS = re.compile(r"\S*\d\S*")


def _mask(words: list[str]) -> str:
    return _DIGITS.sub("#", " ".join(words)).lower()


def skeleton_keys(text: str) -> tuple[str, str] | None:
    """Hashes of the first and the last four words of a prompt (lower case, digits masked),
    or ``None`` for prompts shorter than five words."""
    words = text.split(None, _AFFIX_WORDS)
    if len(words) <= _AFFIX_WORDS:
        return None
    tail = text.rsplit(None, _AFFIX_WORDS)[-_AFFIX_WORDS:]
    return _digest(_mask(words[:_AFFIX_WORDS])), _digest(_mask(tail))


def request_shape(path: str, query: Query, user_agent: str | None) -> str:
    """A hash of what a request looks like apart from its prompt: route, body keys, model,
    output and sampling parameters, and user agent."""
    keys = ",".join(sorted(query.data)) if query.data is not None else query.kind
    parts = (
        path,
        keys,
        query.model or "",
        str(query.max_tokens),
        str(query.top_logprobs),
        str(query.logprobs),
        str(query.n),
        str(query.temperature),
        user_agent or "",
    )
    return _digest("|".join(parts))


class Series:
    """Up to ``cap`` ``(time, value)`` points; when full, neighbouring pairs merge (latest time,
    highest value) and later points are taken every other time, so the plot keeps its peaks."""

    __slots__ = ("_cap", "_pending", "_stride", "times", "values")

    def __init__(self, cap: int = SERIES_POINTS) -> None:
        self._cap = cap - cap % 2
        self._stride = 1
        self._pending = 0
        self.times = array("d")
        self.values = array("d")

    def add(self, t: float, value: float) -> None:
        """Record ``value`` at time ``t``."""
        if self._pending:
            self.times[-1] = t
            if value > self.values[-1]:
                self.values[-1] = value
            self._pending -= 1
            return
        self.times.append(t)
        self.values.append(value)
        self._pending = self._stride - 1
        if len(self.times) >= self._cap:
            times = self.times
            values = self.values
            self.times = array("d", (times[i + 1] for i in range(0, len(times), 2)))
            self.values = array("d", (max(values[i], values[i + 1]) for i in range(0, len(values), 2)))
            self._stride *= 2
            self._pending = 0

    def points(self) -> list[tuple[float, float]]:
        """The recorded points, in time order."""
        return list(zip(self.times, self.values, strict=True))


def _count(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < _MAX_KEYS:
        counter[key] += 1


class ClientTrack:
    """The replay state of one client."""

    __slots__ = (
        "client",
        "day",
        "days",
        "first_flag_request",
        "first_flag_ts",
        "flagged",
        "flagged_day",
        "flagged_days",
        "gap_m2",
        "gap_mean",
        "gaps",
        "ip",
        "last_clock",
        "max_risk",
        "online",
        "prefixes",
        "requests",
        "series",
        "shapes",
        "signals",
        "suffixes",
        "tenant",
        "texts",
    )

    def __init__(self, client: str) -> None:
        self.client = client
        self.requests = 0
        self.flagged = 0
        self.first_flag_request: int | None = None
        self.first_flag_ts: float | None = None
        self.max_risk = 0.0
        self.signals: dict[str, float] = {}
        self.series = Series()
        self.prefixes: Counter[str] = Counter()
        self.suffixes: Counter[str] = Counter()
        self.shapes: Counter[str] = Counter()
        self.texts = 0
        self.gaps = 0
        self.gap_mean = 0.0
        self.gap_m2 = 0.0
        self.last_clock: float | None = None
        self.ip: str | None = None
        self.tenant: str | None = None
        self.day = -1
        self.days = 0
        self.flagged_day = -1
        self.flagged_days = 0
        self.online: Counter[str] | None = None  # the decisions the log says were made online

    def observe(
        self,
        *,
        ts: float,
        clock: float,
        risk: float,
        flagged: bool,
        scores: Sequence[tuple[str, float]],
        online: str | None = None,
    ) -> None:
        """Record one replayed request, its verdict, and the decision made ``online`` (when
        the log says)."""
        self.requests += 1
        if online is not None:
            if self.online is None:
                self.online = Counter()
            self.online[online] += 1
        day = int(ts // 86_400)
        if day != self.day:
            self.day = day
            self.days += 1
        if flagged:
            self.flagged += 1
            if day != self.flagged_day:
                self.flagged_day = day
                self.flagged_days += 1
            if self.first_flag_request is None:
                self.first_flag_request = self.requests
                self.first_flag_ts = ts
        if risk > self.max_risk:
            self.max_risk = risk
        signals = self.signals
        for name, score in scores:
            if score > signals.get(name, -1.0):
                signals[name] = score
        self.series.add(clock, risk)
        last = self.last_clock
        if last is not None:
            gap = clock - last
            self.gaps += 1
            delta = gap - self.gap_mean
            self.gap_mean += delta / self.gaps
            self.gap_m2 += delta * (gap - self.gap_mean)
        self.last_clock = clock

    def observe_features(self, text: str, shape: str) -> None:
        """Record the campaign features of one request."""
        _count(self.shapes, shape)
        if text:
            self.texts += 1
            keys = skeleton_keys(text)
            if keys is not None:
                _count(self.prefixes, keys[0])
                _count(self.suffixes, keys[1])

    # -- campaign features ----------------------------------------------------------------

    def template_family(self, share: float = 0.3) -> str | None:
        """The prefix (``p:``) or suffix (``s:``) hash shared by at least ``share`` of this
        client's text requests (at least five of them), or ``None``."""
        if self.texts < 5:
            return None
        for tag, counter in (("p", self.prefixes), ("s", self.suffixes)):
            if counter:
                key, count = counter.most_common(1)[0]
                if count >= share * self.texts:
                    return f"{tag}:{key}"
        return None

    def cadence(self, max_cv: float = 0.3) -> float | None:
        """The mean inter-arrival time when the gaps are regular (coefficient of variation at
        most ``max_cv`` over at least ten gaps), else ``None``."""
        if self.gaps < 10 or self.gap_mean <= 0:
            return None
        std = math.sqrt(self.gap_m2 / (self.gaps - 1))
        return self.gap_mean if std / self.gap_mean <= max_cv else None

    def dominant_shape(self, share: float = 0.5) -> str | None:
        """The request shape of at least ``share`` of the requests, or ``None``."""
        if not self.shapes:
            return None
        key, count = self.shapes.most_common(1)[0]
        return key if count >= share * self.requests else None

    def signal_map(self) -> Mapping[str, float]:
        """The highest score of each detector."""
        return dict(sorted(self.signals.items()))

"""The shared text features are computed once per request, also when requests are scored in
several threads at once."""

from __future__ import annotations

import threading

from distillguard.detectors._text import features
from distillguard.detectors.defaults import default_detectors
from tests.detectors.traffic import observation, query


def test_a_request_scored_in_another_thread_does_not_evict_the_features() -> None:
    """Thread A's features survive thread B scoring another request in between, so A's later
    detectors reuse them instead of recomputing."""
    mine, other = query("how do I bake bread at home"), query("explain step by step how tides work")
    first = features(mine)
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(features(other)))
    worker.start()
    worker.join()
    assert seen and seen[0] is not first
    assert features(mine) is first


def test_the_default_set_computes_the_features_once_per_request() -> None:
    """All the text detectors of one request share one feature object: after the request, the
    cached object is the one computed before it, and the next request gets a new one."""
    detectors = default_detectors()
    q = query("Explain step by step how a refrigerator keeps food cold at night")
    before = features(q)
    for det in detectors:
        det.score(observation("c", q, 1.0))
    assert features(q) is before
    nxt = query("Explain step by step how a kettle boils water in the morning")
    for det in detectors:
        det.score(observation("c", nxt, 2.0))
    assert features(nxt) is not before

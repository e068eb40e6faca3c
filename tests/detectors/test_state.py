"""Bounded per-client state: the client cap, the memory budget and flat per-request cost."""

from __future__ import annotations

import random
import statistics
import time

import pytest

from distillguard.detectors._state import LRUStates, bit_ring_push, deep_sizeof
from distillguard.detectors.defaults import default_detectors
from distillguard.detectors.near_duplicate import NearDuplicateDetector
from distillguard.errors import ConfigurationError
from distillguard.query import Query, parse_query
from tests.detectors.traffic import benign_prompts, chat_body, observation, query, template_sweep


def test_lru_caps_clients_and_counts_evictions() -> None:
    """The store never holds more than its cap; the least recently used client goes first."""
    store: LRUStates[list[int]] = LRUStates(list, max_clients=3)
    for name in ("a", "b", "c"):
        store.get(name).append(1)
    store.get("a")  # a is now the most recent
    store.get("d")
    assert len(store) == 3 and store.evictions == 1
    assert "b" not in store and store.peek("a") == [1]
    for i in range(100):
        store.get(f"new-{i}")
    assert len(store) == 3 and store.evictions == 101


def test_lru_rejects_a_zero_cap() -> None:
    """A store with no room is a configuration error."""
    with pytest.raises(ConfigurationError):
        LRUStates(list, max_clients=0)


def test_detector_client_cap_holds_under_a_flood() -> None:
    """A detector configured for 50 clients tracks at most 50 of 1,000 distinct clients."""
    det = NearDuplicateDetector(max_clients=50)
    q = query("How do I make a good cup of tea at home?")
    for i in range(1000):
        det.score(observation(f"client-{i}", q))
    assert len(det.states) == 50 and det.states.evictions == 950


def test_bit_ring_keeps_the_last_width_bits() -> None:
    """The integer bit ring forgets bits older than its width."""
    ring = 0
    for _ in range(10):
        ring = bit_ring_push(ring, True, 8)
    assert ring.bit_count() == 8
    for _ in range(3):
        ring = bit_ring_push(ring, False, 8)
    assert ring.bit_count() == 5


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = list(benign_prompts(rng, n // 2)) + list(template_sweep(rng, n - n // 2))
    rng.shuffle(out)
    return out


def test_text_client_state_fits_in_4_5_kb() -> None:
    """After 2,000 varied text queries (with logit_bias, temperatures and timing), all default
    detectors together hold at most 4.5 KB for the client (~0.65 KB of it the scripted-sweep
    rings)."""
    detectors = default_detectors()
    rng = random.Random(7)
    ts = 1_700_000_000.0
    for i, text in enumerate(_texts(2000, 7)):
        ts += rng.uniform(0.5, 30)
        q = query(text, temperature=rng.choice([0.2, 0.7, 1.0]), logit_bias={str(i): 5})
        obs = observation("heavy", q, ts)
        for det in detectors:
            det.score(obs)
    total = sum(deep_sizeof(det.states.peek("heavy")) for det in detectors if det.states.peek("heavy"))
    assert 0 < total <= 4608, total


def test_vector_client_state_fits_in_4_kb() -> None:
    """A 64-feature classifier client: PRADA's capped growing set and distances stay in 4 KB."""
    detectors = default_detectors()
    rng = random.Random(3)
    for i in range(1000):
        vector = [rng.gauss(0, 1) for _ in range(64)]
        obs = observation("vec", parse_query(f'{{"inputs": {vector}}}'.encode()), 1e9 + i)
        for det in detectors:
            det.score(obs)
    total = sum(deep_sizeof(det.states.peek("vec")) for det in detectors if det.states.peek("vec"))
    assert 0 < total <= 4096, total


def _cost(detectors: list[object], client: str, queries: list[Query], ts: float) -> float:
    start = time.perf_counter()
    for i, q in enumerate(queries):
        obs = observation(client, q, ts + i)
        for det in detectors:
            det.score(obs)  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / len(queries)


@pytest.mark.slow
def test_cost_per_request_does_not_grow_with_history() -> None:
    """The default set costs the same per request after 100,000 earlier queries from the client
    as after 10 (median of interleaved repeats; ratio within 1.5)."""
    detectors = default_detectors()
    pool = [parse_query(chat_body(t)) for t in _texts(400, 11)]
    ts = 1_700_000_000.0
    for i in range(100_000):
        obs = observation("old", pool[i % len(pool)], ts + i)
        for det in detectors:
            det.score(obs)
    ts += 200_000
    fresh = [parse_query(chat_body(t)) for t in _texts(300, 12)]
    short: list[float] = []
    long: list[float] = []
    for r in range(9):
        young = f"young-{r}"
        for i in range(10):
            obs = observation(young, pool[i], ts - 100 + i)
            for det in detectors:
                det.score(obs)
        short.append(_cost(detectors, young, fresh, ts))
        long.append(_cost(detectors, "old", fresh, ts))
        ts += 1000
    ratio = statistics.median(long) / statistics.median(short)
    assert ratio < 1.5, (statistics.median(short), statistics.median(long))

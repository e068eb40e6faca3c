"""Memory held per tracked client by the detectors (measured with tracemalloc), the compact
forms of their state giving the same results as the full-size forms, and the client store's
exact LRU order."""

from __future__ import annotations

import gc
import random
import tracemalloc
from collections import OrderedDict
from typing import Any

import pytest

from distillguard.detectors import Observation
from distillguard.detectors._state import LRUStates
from distillguard.detectors.coverage import CoverageDetector
from distillguard.detectors.near_duplicate import NearDuplicateDetector
from distillguard.detectors.probing import ParameterProbeDetector
from distillguard.detectors.timing import VolumeTimingDetector
from distillguard.query import parse_query
from tests.detectors.traffic import benign_prompts, chat_body, observation

# Bytes per client (the store's entry included) for a client seen once and for one whose
# windows are full; measured on CPython 3.11: 277/851, 300/790, 309/303, 283/581.
BOUNDS = {
    NearDuplicateDetector: (350, 950),
    CoverageDetector: (380, 900),
    ParameterProbeDetector: (380, 380),
    VolumeTimingDetector: (350, 680),
}


def _streams(clients: int, requests: int) -> list[list[Observation]]:
    rng = random.Random(7)
    prompts = [parse_query(chat_body(p)) for p in benign_prompts(rng, 300)]
    return [
        [
            observation(f"client-{c:05d}", prompts[(7 * c + r) % len(prompts)], 1_700_000_000.0 + 3.0 * r)
            for r in range(requests)
        ]
        for c in range(clients)
    ]


def _bytes_per_client(detector: Any, streams: list[list[Observation]]) -> float:
    detector.score(observation("warm-up", streams[0][0].query, 1_700_000_000.0))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for stream in streams:
        for obs in stream:
            detector.score(obs)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(streams)


@pytest.mark.parametrize("cls", list(BOUNDS), ids=lambda cls: cls.name)
def test_state_per_client_stays_under_its_bound(cls: Any) -> None:
    """A client seen once holds a few hundred bytes in each detector (its rings grow with its
    first queries), and a client with full windows stays under the detector's bound."""
    once, full = BOUNDS[cls]
    seen_once = _bytes_per_client(cls(), _streams(1_000, 1))
    assert seen_once < once, f"{cls.name}: {seen_once:.0f} B per client seen once"
    seen_often = _bytes_per_client(cls(), _streams(100, 130))
    assert seen_often < full, f"{cls.name}: {seen_often:.0f} B per client with full windows"


def test_the_sparse_coverage_filter_scores_as_the_dense_one() -> None:
    """Coverage's filter starts as a list of its set bits and turns into 512 bytes: the scores
    and signals are those of a filter that was dense from the start, through a clear."""
    sparse = CoverageDetector(min_requests=1, low=0.0, high=0.5, rotate_bits=400, refill=5)
    dense = CoverageDetector(min_requests=1, low=0.0, high=0.5, rotate_bits=400, refill=5)
    dense.states.get("u").words = bytearray(512)
    rng = random.Random(3)
    results = []
    for i, text in enumerate(benign_prompts(rng, 300)):
        obs = observation("u", parse_query(chat_body(text)), 1_700_000_000.0 + i)
        results.append(sparse.score(obs))
        assert results[-1] == dense.score(obs)
        if len(dense.states.get("u").words) != 512:  # cleared: dense again
            dense.states.get("u").words = bytearray(512)
    assert max(r.score for r in results) > 0.0
    assert sparse.states.get("u").bits < 400


def test_rings_filled_then_wrapped_keep_scoring_the_window() -> None:
    """The near-duplicate rings grow to the window, then wrap: a sweep is flagged as before,
    and after the window has moved on to new prompts the rate falls back."""
    detector = NearDuplicateDetector(window=16, min_requests=8)
    sweep = [
        f"Summarise the history of the Roman empire, its army, roads, aqueducts and senate: part {i}"
        for i in range(40)
    ]
    scores = [
        detector.score(observation("s", parse_query(chat_body(text)), 1_700_000_000.0 + i)).score
        for i, text in enumerate(sweep)
    ]
    assert scores[15] > 0.0 and scores[39] == 1.0  # flagged, and still once the rings have wrapped
    rng = random.Random(2)
    tail = [
        detector.score(observation("s", parse_query(chat_body(text)), 1_700_100_000.0 + i)).score
        for i, text in enumerate(benign_prompts(rng, 40))
    ]
    assert tail[-1] == 0.0
    state = detector.states.get("s")
    assert len(state.keys) == 2 * len(state.texts) == 4 * 16


@pytest.mark.parametrize("cap", [1, 3, 200, 5_000])
def test_the_store_evicts_exactly_the_least_recently_used_client(cap: int) -> None:
    """Against an ``OrderedDict`` model, over random uses of returning and new clients: the
    same clients are kept, in the same order, and every eviction is counted."""
    store: LRUStates[list[int]] = LRUStates(list, max_clients=cap)
    model: OrderedDict[str, None] = OrderedDict()
    rng = random.Random(cap)
    evicted = 0
    for i in range(20 * cap + 200):
        client = f"c{rng.randrange(2 * cap + 2)}" if rng.random() < 0.7 else f"new-{i}"
        store.get(client)
        if client in model:
            model.move_to_end(client)
        else:
            if len(model) >= cap:
                model.popitem(last=False)
                evicted += 1
            model[client] = None
        if i % 97 == 0:
            assert list(store._states) == list(model)
    assert list(store._states) == list(model)
    assert len(store) == len(model) <= cap and store.evictions == evicted

"""The shared detector state's codec and exchange (no storage: see
``tests/redis/test_shared_detector_state.py`` for Redis): every built-in per-client detector's
state survives a round trip after real traffic, what does not fit is refused, and a guard that
installs another replica's state scores as that replica would."""

from __future__ import annotations

import json
import logging
from array import array
from typing import Any

import pytest

from distillguard import DetectorResult, Identity, Observation
from distillguard.detectors._sharing import StateShare, decode_state, encode_state, shareable
from distillguard.detectors._state import LRUStates
from distillguard.detectors.defaults import default_detectors
from distillguard.detectors.prada import PradaDetector
from distillguard.detectors.scripted import ScriptedSweepDetector
from distillguard.detectors.semantic import SemanticCoverageDetector
from distillguard.query import parse_query


def observation(i: int, client: str = "c1", body: dict[str, Any] | None = None) -> Observation:
    doc = body or {
        "model": "m",
        "messages": [{"role": "user", "content": f"Summarize chapter {i} of the report on topic {i % 7}"}],
        "logprobs": True,
        "top_logprobs": 5,
        "logit_bias": {str(100 + i): 5},
        "max_tokens": 1,
    }
    return Observation(
        identity=Identity(client_id=client),
        timestamp=1_800_000_000.0 + 1.3 * i,
        method="POST",
        route="/v1/chat/completions",
        query=parse_query(json.dumps(doc).encode(), "application/json"),
    )


def vector_observation(i: int) -> Observation:
    return observation(i, body={"instances": [[0.1 * (i % 5), 0.2, 0.3 * (i % 3), 0.4 * (i % 11)]]})


def detectors() -> list[Any]:
    return [*default_detectors(), SemanticCoverageDetector(embedder="hashed")]


def test_every_built_in_per_client_detector_shares() -> None:
    assert all(shareable(d) for d in detectors())


@pytest.mark.parametrize("requests", [1, 2, 40, 150])
def test_each_state_round_trips_after_real_traffic(requests: int) -> None:
    """Encoded, JSON-dumped, loaded and decoded into a fresh state, each detector's state
    encodes the same again."""
    dets = detectors()
    for i in range(requests):
        for det in dets:
            det.score(vector_observation(i) if det.name == "prada" else observation(i))
    for det in dets:
        state = det.states.peek("c1")
        assert state is not None
        encoded = encode_state(state)
        back = decode_state(det.states.fresh(), json.loads(json.dumps(encoded)))
        assert encode_state(back) == encoded, det.name


def test_a_shared_empty_ring_stays_the_shared_one() -> None:
    """``scripted_sweep`` makes its rings on a client's second request; a decoded state of a
    client seen once keeps the module's shared empty ring (never written)."""
    det = ScriptedSweepDetector()
    det.score(observation(0))
    fresh = det.states.fresh()
    back = decode_state(det.states.fresh(), encode_state(det.states.peek("c1")))
    assert back.words is fresh.words  # type: ignore[attr-defined]


def state_with(**values: Any) -> Any:
    class _S:
        __slots__ = ("a", "b", "f", "n", "opt")

        def __init__(self) -> None:
            self.a = array("H")
            self.b = bytearray(4)
            self.f = 0.0
            self.n = 0
            self.opt: array[int] | None = None

    state = _S()
    for k, v in values.items():
        setattr(state, k, v)
    return state


@pytest.mark.parametrize(
    ("slot", "value"),
    [
        ("n", "5"),  # a string for an int
        ("n", 5.0),  # a float for an int
        ("f", 1),  # an int for a float
        ("n", True),  # a bool for an int
        ("a", ["a", "d", ""]),  # another array type
        ("a", ["a", "H", "AAAA"]),  # a partial item (3 bytes of 2-byte items)
        ("a", ["b", "AAAA"]),  # bytes for an array
        ("b", ["b", "not base64!"]),
        ("b", ["a", "H", "AAAA"]),
        ("b", None),
        ("opt", ["a", "x", "AAAA"]),  # an unknown array type
        ("opt", "text"),
    ],
)
def test_a_value_that_does_not_fit_its_slot_is_refused(slot: str, value: Any) -> None:
    encoded = encode_state(state_with())
    names = ("a", "b", "f", "n", "opt")
    encoded[names.index(slot)] = value
    with pytest.raises(ValueError):
        decode_state(state_with(), encoded)


def test_values_of_every_supported_kind_round_trip() -> None:
    state = state_with(a=array("H", [1, 65535]), b=bytearray(b"\x00\xff"), f=float("nan"), n=2**80)
    state.opt = array("d", [1.5, float("inf")])
    back = decode_state(state_with(), json.loads(json.dumps(encode_state(state))))
    assert back.a == state.a and back.b == state.b and back.n == 2**80
    assert back.f != back.f  # NaN
    assert back.opt == state.opt


def test_another_number_of_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_state(state_with(), encode_state(state_with())[:-1])


def test_install_then_score_matches_the_replica_that_wrote() -> None:
    """Replica B, given replica A's exported state, scores the next request exactly as A does."""
    a, b = detectors(), detectors()
    share_a, share_b = StateShare(tuple(a), 60), StateShare(tuple(b), 60)
    for i in range(70):
        for det in a:
            det.score(observation(i))
    exported = share_a.export("c1")
    assert exported is not None
    share_b.install("c1", (exported[0].encode(), exported[1].encode()))  # as Redis answers
    assert share_b.known("c1") == exported[0] and share_b.loaded == 1 and share_b.rejected == 0
    for det_a, det_b in zip(a, b, strict=True):
        assert det_a.score(observation(70)) == det_b.score(observation(70))


def test_install_ignores_what_is_not_a_state() -> None:
    share = StateShare(tuple(detectors()), 60)
    deep = b"[" * 100_000 + b"]" * 100_000
    for reply in (None, 5, ("only one",), ("stamp", 7), (b"s", b"[1]"), (b"s", b"{bad"), (b"s", deep)):
        share.install("c1", reply)
    assert share.loaded == 0
    assert share.known("c1") == "s"  # seen, though it did not fit: the next write replaces it


def test_export_of_an_unknown_client_is_none_and_stamps_are_new() -> None:
    dets = detectors()
    share = StateShare(tuple(dets), 60)
    assert share.export("nobody") is None
    dets[0].score(observation(0))
    first, second = share.export("c1"), share.export("c1")
    assert first is not None and second is not None and first[0] != second[0]


class Listy:
    """A state that cannot be shared (a list)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[int] = []


class Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class Plugin:
    """A plugin detector that opts into shared state: it counts each client's requests."""

    shares_state = True

    def __init__(self, name: str, state: Any) -> None:
        self.name = name
        self.states: LRUStates[Any] = LRUStates(state)

    def score(self, observation: Observation) -> DetectorResult:
        state = self.states.get(observation.identity.client_id)
        if isinstance(state, Counter):
            state.n += 1
        return DetectorResult(self.name, 0.0)


def test_a_detector_whose_state_cannot_be_shared_stays_per_process(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="distillguard"):
        share = StateShare((Plugin("listy", Listy), PradaDetector()), 60)
    assert share.names == ("prada",)
    assert "listy" in caplog.text


def test_a_plugin_opts_in_with_shares_state() -> None:
    a, b = Plugin("counter", Counter), Plugin("counter", Counter)
    for i in range(3):
        a.score(observation(i))
    exported = StateShare((a,), 60).export("c1")
    assert exported is not None
    StateShare((b,), 60).install("c1", exported)
    assert b.states.peek("c1") is not None and b.states.peek("c1").n == 3
    assert not shareable(type("NoOptIn", (), {"states": LRUStates(Counter)})())


def test_put_respects_the_cap() -> None:
    states: LRUStates[list[int]] = LRUStates(list, max_clients=2)
    states.put("a", [1])
    states.put("b", [2])
    states.put("a", [3])  # replaces, no eviction
    assert len(states) == 2 and states.evictions == 0
    states.put("c", [4])
    assert len(states) == 2 and states.evictions == 1 and states.peek("b") is None

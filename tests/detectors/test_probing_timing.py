"""The parameter-probe and volume/timing detectors."""

from __future__ import annotations

import random

import pytest

from distillguard.detectors.probing import ParameterProbeDetector
from distillguard.detectors.timing import VolumeTimingDetector
from distillguard.errors import ConfigurationError
from tests.detectors.traffic import observation, query


def test_rotating_logit_bias_with_logprobs_scores_one_within_10() -> None:
    """Carlini-style probes (new biased token ids each time, logprobs, max_tokens=1) reach 1."""
    det = ParameterProbeDetector()
    out = []
    for i in range(12):
        q = query("Hi", logprobs=True, top_logprobs=5, max_tokens=1, logit_bias={str(1000 + i): 100})
        out.append(det.score(observation("p", q)))
    assert out[9].score == 1.0 and out[9].reasons == ("rotating_logit_bias",)
    assert out[9].signals["probe_points"] == 1.0


def test_fixed_logit_bias_is_not_probing() -> None:
    """A legitimate user banning the same two tokens on every request stays near 0."""
    det = ParameterProbeDetector()
    top = 0.0
    for i in range(100):
        q = query(f"question {i}", logprobs=True, max_tokens=1, logit_bias={"50256": -100, "198": -100})
        top = max(top, det.score(observation("u", q)).score)
    assert top < 0.25


def test_sampling_sweeps_are_moderate_on_their_own() -> None:
    """n and temperature sweeps without logit_bias score, but below the block level."""
    det = ParameterProbeDetector()
    result = None
    for i in range(40):
        q = query("Describe a cat.", n=8, max_tokens=8, temperature=round(0.1 * (i % 15), 1))
        result = det.score(observation("s", q))
    assert result is not None and 0.5 <= result.score < 0.9
    assert result.reasons == ("sampling_sweep",)


@pytest.mark.parametrize("temperature", [-1.0, -1e300, 5.1, 6.0, 1e300, 1.7976931348623157e308])
def test_a_temperature_out_of_range_still_counts(temperature: float) -> None:
    """A negative or very high temperature is a sweep value like any other: the detector neither
    fails (a failing detector is switched off for the request) nor ignores it."""
    det = ParameterProbeDetector()
    scores = [
        det.score(
            observation("t", query("Describe a cat.", n=8, max_tokens=8, temperature=t), float(i))
        ).score
        for i, t in enumerate([0.2, temperature, 0.7, temperature * 0.5, 1.1] * 8)
    ]
    assert max(scores) > 0.0


def test_probing_ignores_non_text_requests() -> None:
    """Embedding and vector requests are not scored."""
    det = ParameterProbeDetector()
    from distillguard.query import parse_query

    assert det.score(observation("e", parse_query(b'{"model": "e", "input": "x"}'))).score == 0.0


def feed(det: VolumeTimingDetector, gaps: list[float], client: str = "t") -> float:
    """Feed arrivals separated by ``gaps``; return the highest score."""
    ts = 1_700_000_000.0
    top = 0.0
    q = query("hello")
    for gap in gaps:
        ts += gap
        top = max(top, det.score(observation(client, q, ts)).score)
    return top


def test_machine_regular_fast_stream_is_flagged() -> None:
    """A request every 2.0 s (jitter 1%) scores the detector's cap."""
    rng = random.Random(0)
    det = VolumeTimingDetector()
    assert feed(det, [2.0 * rng.uniform(0.99, 1.01) for _ in range(100)]) == det.max_score


def test_human_paced_traffic_is_not_flagged() -> None:
    """Bursty human traffic (exponential gaps, mean 40 s, with long pauses) stays below 0.5."""
    rng = random.Random(1)
    gaps = [rng.expovariate(1 / 40) if rng.random() > 0.05 else rng.uniform(600, 3600) for _ in range(500)]
    assert feed(VolumeTimingDetector(), gaps) < 0.5


def test_timing_alone_never_blocks() -> None:
    """Even a perfectly regular flood scores at most ``max_score`` (0.7 by default)."""
    det = VolumeTimingDetector()
    assert feed(det, [0.1] * 200) <= 0.7


def test_out_of_order_timestamps_are_ignored() -> None:
    """A request older than the last one is skipped, not counted as a negative gap."""
    det = VolumeTimingDetector()
    assert feed(det, [5.0, -3.0, 5.0, 5.0]) == 0.0
    assert det.states.get("t").n == 2


def test_bias_value_search_on_the_same_ids_is_probing() -> None:
    """logit_bias alone, searching bias values on one fixed token id, reaches 1 within 10."""
    det = ParameterProbeDetector()
    result = None
    for i in range(10):
        q = query("Answer yes or no.", max_tokens=1, logit_bias={"3763": 2.0 + 0.5 * i})
        result = det.score(observation("search", q))
    assert result is not None and result.score == 1.0


def _mixed_probe_scores(
    det: ParameterProbeDetector, every: int, requests: int, client: str = "m"
) -> list[float]:
    """Scores of a client sending a Carlini-style probe once every ``every`` requests among
    ordinary chat requests."""
    scores = []
    for i in range(requests):
        if i % every == every - 1:
            bias = {str(5000 + i): 100}
            q = query("Hi", logprobs=True, top_logprobs=5, max_tokens=1, logit_bias=bias)
        else:
            q = query(f"an ordinary question number {i}", max_tokens=256)
        scores.append(det.score(observation(client, q)).score)
    return scores


def test_probes_hidden_one_in_twenty_reach_the_flag_level() -> None:
    """One probe in twenty requests keeps the window mean low; the decayed probe mass still
    reaches the flag level after about ten probes, with its own reason."""
    det = ParameterProbeDetector()
    scores = _mixed_probe_scores(det, 20, 400)
    first = next(i for i, s in enumerate(scores) if s >= 0.5)
    assert 150 <= first <= 300
    q = query("Hi", logprobs=True, max_tokens=1, logit_bias={"77": 100})
    result = det.score(observation("m", q))
    assert result.reasons == ("sustained_logit_bias_rotation",)
    assert result.signals["probe_mass"] > 8.0


def test_probe_mass_decays_away() -> None:
    """Ten probes then a long run of ordinary requests: the score falls back to zero."""
    det = ParameterProbeDetector(horizon=64)
    for i in range(10):
        det.score(observation("d", query("Hi", logprobs=True, max_tokens=1, logit_bias={str(i): 100})))
    last = 1.0
    for i in range(600):
        last = det.score(observation("d", query(f"plain question {i}"))).score
    assert last == 0.0 and det.states.get("d").mass == 0.0


def test_an_app_rotating_a_few_bias_maps_is_not_probing() -> None:
    """A classifier app with twelve fixed label sets, chosen at random over 2,000 requests with
    logprobs: each map is new once, so the mass never builds up. (Its first dozen requests, all
    new maps, do look like a probe: the window signal cannot know yet that the maps recur.)"""
    det = ParameterProbeDetector()
    rng = random.Random(3)
    label_sets = [{str(300 + 2 * k): 100, str(301 + 2 * k): 100} for k in range(12)]
    top = 0.0
    for i in range(2000):
        q = query(
            f"classify text {i}",
            logprobs=True,
            top_logprobs=2,
            max_tokens=1,
            logit_bias=rng.choice(label_sets),
        )
        score = det.score(observation("app", q)).score
        if i >= 100:
            top = max(top, score)
    assert top < 0.1
    assert det.states.get("app").mass < 1.0


def test_probe_horizon_and_sustained_are_checked() -> None:
    """Out-of-range options fail at construction."""
    with pytest.raises(ConfigurationError):
        ParameterProbeDetector(horizon=4)
    with pytest.raises(ConfigurationError):
        ParameterProbeDetector(sustained=0.0)

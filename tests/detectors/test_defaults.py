"""The default detector set: names, entry points, documentation, and that detectors never
break a request through the guard."""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable

from distillguard import Action, Guard, Identity, Policy
from distillguard._drivers import drive
from distillguard.detectors import ENTRY_POINT_GROUP, load_detectors
from distillguard.detectors.defaults import DEFAULT_DETECTORS, default_detectors
from distillguard.request import GuardRequest
from distillguard.risk import RiskPolicy

NAMES = [
    "near_duplicate",
    "template_sweep",
    "coverage",
    "parameter_probe",
    "volume_timing",
    "prada",
    "scripted_sweep",
    "word_salad",
]


def test_default_set_has_the_fixed_names() -> None:
    """default_detectors() builds one fresh instance of each built-in detector, in order."""
    first, second = default_detectors(), default_detectors(max_clients=10)
    assert [d.name for d in first] == NAMES
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert all(d.states.max_clients == 10 for d in second)


def test_every_default_detector_loads_by_entry_point_name() -> None:
    """Each name is registered in the distillguard.detectors group and loads its class."""
    loaded = load_detectors(NAMES)
    assert [type(d) for d in loaded] == list(DEFAULT_DETECTORS.values())
    assert ENTRY_POINT_GROUP == "distillguard.detectors"
    options = load_detectors({"near_duplicate": {"window": 32}})
    assert options[0].window == 32


def test_each_detector_documents_signal_anchor_and_cost() -> None:
    """Every detector module's docstring has its Signal, Anchor and Cost sections."""
    for cls in DEFAULT_DETECTORS.values():
        doc = importlib.import_module(cls.__module__).__doc__ or ""
        for section in ("**Signal.**", "**Anchor.**", "**Cost.**"):
            assert section in doc, (cls.__name__, section)


def test_guard_with_defaults_and_risk_serves_mixed_bodies(guard_factory: Callable[..., Guard]) -> None:
    """Chat, completion, embedding, vector, non-JSON and empty bodies all pass through the
    default set and the risk policy without an error."""
    guard = guard_factory(detectors=default_detectors(), policy=Policy(risk=RiskPolicy()))
    perform = guard.sync_performer()
    bodies = [
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hello, how are you?"}]}),
        json.dumps({"model": "m", "prompt": ["a", "b"], "logprobs": 5, "logit_bias": {"1": 5}}),
        json.dumps({"model": "e", "input": "embed me"}),
        json.dumps({"inputs": [[0.1, 0.2, 0.3]]}),
        "not json at all",
        "",
    ]
    for i, body in enumerate(bodies):
        request = GuardRequest(
            method="POST",
            path="/v1/x",
            authorization=None,
            content_type="application/json",
            body=body.encode(),
            client_address=None,
            user_agent=None,
            timestamp=time.time() + i,
            identity=Identity(client_id="mixed"),
        )
        decision = drive(guard.flow(request), perform)
        assert decision.action is Action.ALLOW and not decision.errors, (body, decision)

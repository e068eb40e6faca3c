"""The example plugin in ``examples/custom_detector``: loaded by entry point, without installing it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import openai
import pytest
from examples.make_token import mint_token

from distillguard import DetectorResult, Guard, Identity, Observation, Query
from distillguard.detectors import ENTRY_POINT_GROUP, load_detectors, validate_detector
from distillguard.settings import guard_from_env, registered_detectors
from tests.examples.conftest import ENV, Serve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "custom_detector"


def _declared() -> dict[str, str]:
    data = tomllib.loads((PLUGIN / "pyproject.toml").read_text())
    entries: dict[str, str] = data["project"]["entry-points"][ENTRY_POINT_GROUP]
    return entries


def _observation(text: str, client: str = "alice") -> Observation:
    return Observation(
        identity=Identity(client_id=client),
        timestamp=0.0,
        method="POST",
        route="/v1/chat/completions",
        query=Query(kind="chat", text=text),
    )


@pytest.fixture
def plugin_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugin's source importable (as an editable install would make it), nothing installed."""
    monkeypatch.syspath_prepend(str(PLUGIN / "src"))
    yield
    sys.modules.pop("distillguard_shouting", None)


@pytest.fixture
def plugin_registered(plugin_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's entry points visible to ``importlib.metadata`` through a dist-info on sys.path."""
    dist = tmp_path / "distillguard_shouting-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: distillguard-shouting\nVersion: 0.1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in _declared().items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_object_loads_a_valid_detector(plugin_on_path: None) -> None:
    """The declared entry point, built as an EntryPoint object, loads a detector that scores shouting."""
    [(name, value)] = _declared().items()
    assert name == "shouting"
    factory = EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP).load()
    detector = validate_detector(factory(window=4), name)
    assert detector.name == "shouting"
    calm = detector.score(_observation("please explain how tides work"))
    assert calm == DetectorResult("shouting", 0.0, (), {"shouted_share": 0.0, "prompts": 1.0})
    scores = [detector.score(_observation("WHY IS THE SKY BLUE TELL ME NOW")).score for _ in range(4)]
    assert scores == sorted(scores) and scores[-1] == 1.0
    assert detector.score(_observation("quiet words here", client="bob")).score == 0.0  # per client
    with pytest.raises(ValueError):
        factory(window=0)


def test_installing_switches_nothing_on(plugin_registered: None) -> None:
    """A registered plugin is listed but loads only when named."""
    assert "shouting" in registered_detectors()
    assert [d.name for d in load_detectors(["shouting"])] == ["shouting"]
    explicit = Guard(jwt=None, detectors=[])
    assert explicit.detectors == ()


def test_named_in_settings_blocks_over_http(plugin_registered: None, serve: Serve) -> None:
    """``DISTILLGUARD_DETECTORS=shouting`` puts the plugin in front of the example app."""
    environ = {**ENV, "DISTILLGUARD_DETECTORS": "shouting"}
    assert [d.name for d in guard_from_env(environ).detectors] == ["shouting"]
    url = serve("fastapi", environ)
    client = openai.OpenAI(base_url=url + "/v1", api_key=mint_token("loud", environ=environ), max_retries=0)
    with client:
        for _ in range(3):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello there"}])
        with pytest.raises(openai.RateLimitError) as caught:
            for _ in range(20):
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "ANSWER ME RIGHT NOW PLEASE"}]
                )
        assert caught.value.code == "suspicious_usage"

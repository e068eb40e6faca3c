"""Loading detectors by name from the ``distillguard.detectors`` entry-point group.

Entry points are real ``importlib.metadata.EntryPoint`` objects pointing at classes and
factories in :mod:`tests.helpers`; only the registry's lookup is replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from distillguard import ConfigurationError, Guard, PluginError
from distillguard.detectors import ENTRY_POINT_GROUP, _registry, load_detectors, validate_detector
from tests.helpers import StaticDetector

pytestmark = pytest.mark.timeout(30)


def ep(name: str, value: str) -> EntryPoint:
    """An entry point of the detector group."""
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``installed(*entry_points)``: make these the installed plugins; returns the names of the
    entry points that were loaded (so tests can check nothing else was imported)."""
    loaded: list[str] = []

    def install(*points: EntryPoint) -> list[str]:
        class Tracking:
            def __init__(self, point: EntryPoint) -> None:
                self.point = point
                self.name = point.name
                self.value = point.value

            def load(self) -> Any:
                loaded.append(self.point.name)
                return self.point.load()

        table: dict[str, list[Any]] = {}
        for p in points:
            table.setdefault(p.name, []).append(Tracking(p))
        monkeypatch.setattr(_registry, "_entry_points", lambda: table)
        return loaded

    return install


def test_only_listed_names_load(installed: Callable[..., list[str]]) -> None:
    """Installed plugins that the configuration does not name are never imported."""
    loaded = installed(
        ep("static", "tests.helpers:static_detector_factory"),
        ep("broken_factory", "tests.helpers:failing_factory"),
        ep("missing_module", "tests.no_such_module:Thing"),
    )
    (detector,) = load_detectors(["static"])
    assert isinstance(detector, StaticDetector)
    assert loaded == ["static"]


def test_options_reach_the_factory(installed: Callable[..., list[str]]) -> None:
    """A ``{name: options}`` mapping passes the options to the factory as keywords."""
    installed(ep("static", "tests.helpers:static_detector_factory"))
    (detector,) = load_detectors({"static": {"score": 0.7, "name": "seventy"}})
    assert detector.name == "seventy" and detector.value == 0.7


def test_guard_loads_by_name(
    installed: Callable[..., list[str]], guard_factory: Callable[..., Guard]
) -> None:
    """A guard accepts detector names beside instances."""
    installed(ep("static", "tests.helpers:static_detector_factory"))
    guard = guard_factory(detectors=[StaticDetector(0.1, name="inline"), "static"])
    assert [d.name for d in guard.detectors] == ["inline", "static"]


@pytest.mark.parametrize(
    ("points", "name", "message"),
    [
        pytest.param([], "nope", "no such entry point", id="unknown-name"),
        pytest.param(
            [ep("bad", "tests.helpers:failing_factory")], "bad", "could not be created", id="factory-raises"
        ),
        pytest.param(
            [ep("bad", "tests.no_such_module:Thing")], "bad", "could not be created", id="import-fails"
        ),
        pytest.param([ep("bad", "tests.helpers:NotADetector")], "bad", "score", id="no-score"),
    ],
)
def test_plugin_errors_carry_the_name(
    installed: Callable[..., list[str]], points: list[EntryPoint], name: str, message: str
) -> None:
    """Each failure is a PluginError (a ConfigurationError) naming the entry point."""
    installed(*points)
    with pytest.raises(PluginError, match=message) as info:
        load_detectors([name])
    assert info.value.name == name
    assert isinstance(info.value, ConfigurationError)
    assert name in str(info.value)


def test_unknown_name_fails_guard_construction(
    installed: Callable[..., list[str]], guard_factory: Callable[..., Guard]
) -> None:
    """A guard naming a detector that is not installed fails at construction."""
    installed()
    with pytest.raises(PluginError):
        guard_factory(detectors=["near_duplicate_typo"])


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(object(), id="no-name"),
        pytest.param(type("N", (), {"name": "", "score": lambda self, o: None})(), id="empty-name"),
        pytest.param(type("S", (), {"name": "s", "score": 3})(), id="score-not-callable"),
    ],
)
def test_validate_detector_rejects(obj: object) -> None:
    """Objects without a usable ``name`` and ``score`` are refused."""
    with pytest.raises(PluginError):
        validate_detector(obj, "candidate")


def test_duplicate_detector_names_refused(guard_factory: Callable[..., Guard]) -> None:
    """Two detectors with the same name would mix up their scores: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="same"):
        guard_factory(detectors=[StaticDetector(name="same"), StaticDetector(name="same")])


def test_real_lookup_reads_the_group() -> None:
    """Without monkeypatching, the lookup returns the group's entry points by name."""
    table = _registry._entry_points()
    assert all(point.group == ENTRY_POINT_GROUP for points in table.values() for point in points)
    assert len(table["near_duplicate"]) == 1


def test_a_name_registered_twice_is_refused(installed: Callable[..., list[str]]) -> None:
    """A second package registering a detector's name (a built-in's included) never replaces
    it silently: loading that name fails and names both owners; nothing is imported."""
    loaded = installed(
        ep("near_duplicate", "distillguard.detectors.near_duplicate:NearDuplicateDetector"),
        ep("near_duplicate", "tests.helpers:static_detector_factory"),
        ep("static", "tests.helpers:static_detector_factory"),
    )
    with pytest.raises(PluginError, match=r"registered by .* and .*uninstall one"):
        load_detectors(["near_duplicate"])
    assert loaded == []
    assert isinstance(load_detectors(["static"])[0], StaticDetector)

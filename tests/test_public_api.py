"""The public API: ``distillguard.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import importlib
import inspect

import pytest

import distillguard

pytestmark = pytest.mark.timeout(30)


def test_all_is_sorted() -> None:
    """``__all__`` is sorted, so additions are reviewed in one obvious place."""
    assert distillguard.__all__ == sorted(distillguard.__all__)


def test_all_has_no_duplicates() -> None:
    """Every public name is listed once."""
    assert len(distillguard.__all__) == len(set(distillguard.__all__))


@pytest.mark.parametrize("name", distillguard.__all__)
def test_every_name_is_importable(name: str) -> None:
    """``from distillguard import <name>`` works for every name in ``__all__``."""
    module = importlib.import_module("distillguard")
    assert getattr(module, name) is not None


def test_public_classes_are_exported_from_the_top() -> None:
    """Public classes and functions defined in distillguard and re-exported at the top level
    say so in their module path (``__module__`` starts with ``distillguard``) and have a
    docstring."""
    for name in distillguard.__all__:
        obj = getattr(distillguard, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("distillguard"), name
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_version_is_a_string() -> None:
    """``__version__`` is a non-empty version string."""
    assert isinstance(distillguard.__version__, str) and distillguard.__version__[0].isdigit()

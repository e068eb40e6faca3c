"""Fixtures of the limit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.limiting.apps import OPEN


@pytest.fixture(autouse=True)
def close_harnesses() -> Iterator[None]:
    """Close the ASGI harnesses a test created (their Redis connections and event loops)."""
    before = list(OPEN)
    yield
    for harness in [h for h in OPEN if h not in before]:
        harness.close()

"""Fixtures of the limit tests: ``close_harnesses`` (see :mod:`tests.limiting.apps`)."""

from __future__ import annotations

from tests.limiting.apps import close_harnesses as close_harnesses

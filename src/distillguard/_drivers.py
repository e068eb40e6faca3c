"""The only sync/async twin code: running a pipeline generator to its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

from .flow import Effect

__all__ = ["adrive", "drive"]

T = TypeVar("T")


def drive(flow: Generator[Effect, object, T], perform: Callable[[Effect], object]) -> T:
    """Run ``flow``, performing each effect synchronously; return its result."""
    try:
        effect = next(flow)
        while True:
            effect = flow.send(perform(effect))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(flow: Generator[Effect, object, T], perform: Callable[[Effect], Awaitable[object]]) -> T:
    """Run ``flow``, awaiting each effect; return its result."""
    try:
        effect = next(flow)
        while True:
            effect = flow.send(await perform(effect))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]

"""What one admitted request still owes its limits once the response is over.

A :class:`Budget` rides on the :class:`~distillguard.Decision` of an admitted request. The
exchange shows it the response body (:meth:`Budget.observe`), asks it for the settle effects when
the response is complete (:meth:`Budget.settle`) and releases its concurrency slot when the
exchange ends, on every path (:meth:`Budget.release`).

Token reconciliation, per token window the request was charged on (``estimate`` = estimated
prompt tokens + ``max_tokens`` x ``n``):

* the response reported ``usage``: actual = ``total_tokens`` (or prompt + completion);
* a stream without ``usage``: actual = estimated prompt tokens + counted content deltas;
* no usage and a status of 400 or more: actual = 0 (the model produced nothing);
* no usage on a success: the estimate stays charged (the safe side).

Then ``actual - estimate`` is charged when positive, refunded when negative: the window ends up
holding exactly ``actual`` for this request. :meth:`Budget.settle` runs once; later calls yield
nothing, so a response is never counted twice.
"""

from __future__ import annotations

from collections.abc import Generator

from .concurrency import Slot
from .effects import ChargeLimit, RefundLimit
from .plan import LimitCheck
from .tokens import TokenEstimate
from .usage import Usage, UsageParser

__all__ = ["Budget"]


class Budget:
    """Token reconciliation and the concurrency slot of one admitted request.

    Args:
        charges: the token windows charged, with the mode they were charged in.
        estimate: the request's token estimate.
        slot: the concurrency slot, if the client has a cap.
    """

    __slots__ = ("_settled", "actual", "charges", "estimate", "parser", "slot", "usage")

    def __init__(
        self,
        *,
        charges: tuple[tuple[LimitCheck, str], ...] = (),
        estimate: TokenEstimate | None = None,
        slot: Slot | None = None,
    ) -> None:
        self.charges = charges
        self.estimate = estimate
        self.slot = slot
        self.parser = UsageParser() if charges else None
        self.usage: Usage | None = None
        self.actual: int | None = None
        self._settled = False

    def observe(self, chunk: bytes) -> None:
        """A chunk of the response body went past."""
        if self.parser is not None:
            self.parser.feed(chunk)

    def _actual(self, status: int | None) -> int | None:
        usage = self.usage = self.parser.result() if self.parser is not None else None
        prompt_estimate = self.estimate.prompt if self.estimate is not None else 0
        if usage is not None:
            if usage.source == "usage" and usage.total is not None:
                return usage.total
            prompt = usage.prompt if usage.prompt is not None else prompt_estimate
            return prompt + usage.completion
        if status is None or status >= 400:
            return 0
        return None

    def settle(self, status: int | None) -> Generator[ChargeLimit | RefundLimit, object, None]:
        """The reconciliation effects (once; see the module docstring)."""
        if self._settled or not self.charges:
            return
        self._settled = True
        actual = self._actual(status)
        if actual is None:
            return
        self.actual = actual
        for check, mode in self.charges:
            diff = actual - check.cost
            if diff > 0:
                yield ChargeLimit(check, diff, mode)
            elif diff < 0:
                yield RefundLimit(check, -diff, mode)

    def release(self) -> None:
        """Give the concurrency slot back (idempotent)."""
        if self.slot is not None:
            self.slot.release()

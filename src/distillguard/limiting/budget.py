"""What one admitted request still owes its limits once the response is over.

A :class:`Budget` rides on the :class:`~distillguard.Decision` of an admitted request. The
exchange shows it the response body (:meth:`Budget.observe`), asks it for the settle effects when
the response is complete (:meth:`Budget.settle`) and releases its concurrency slot when the
exchange ends, on every path (:meth:`Budget.release`).

Token reconciliation, per token window the request was charged on (``estimate`` = estimated
prompt tokens + ``max_tokens`` x ``n``; an ``input_tokens`` window counts the prompt side only,
an ``output_tokens`` window the completion side only; a ``cost`` window both sides at the model's
price):

* the response reported ``usage``: actual = ``total_tokens`` (or prompt + completion); the
  prompt side is ``prompt_tokens`` (else ``total_tokens`` minus the completion, else the
  estimate), the completion side ``completion_tokens``;
* a stream without ``usage``: actual = estimated prompt tokens + counted content deltas (the
  prompt side the estimate, the completion side the deltas);
* no usage and a status of 400 or more: actual = 0 (the model produced nothing);
* no usage on a success: the estimate stays charged (the safe side).

Then ``actual - estimate`` is charged when positive, refunded when negative: the window ends up
holding exactly ``actual`` for this request. The request windows in ``refunds``
(``LimitConfig.refund_server_errors``) are refunded whole when the status is 500 or more (or
unknown: the adapters settle no exchange whose app raised, which keeps every charge).
:meth:`Budget.settle` runs once; later calls yield nothing, so a response is never counted
twice.
"""

from __future__ import annotations

from collections.abc import Generator

from .concurrency import SharedSlot, Slot
from .effects import ChargeLimit, RefundLimit, ReleaseSlot, RenewSlot
from .plan import LimitCheck
from .tokens import TokenEstimate
from .usage import Usage, UsageParser

__all__ = ["Budget"]


class Budget:
    """Token reconciliation and the concurrency slot of one admitted request.

    Args:
        charges: the token windows charged, with the mode they were charged in.
        refunds: the request windows to refund after a server error, with their modes.
        estimate: the request's token estimate.
        slot: the concurrency slot, if the client has a cap (in process, or a lease on the
            shared storage).
    """

    __slots__ = ("_settled", "actual", "charges", "estimate", "parser", "refunds", "slot", "usage")

    def __init__(
        self,
        *,
        charges: tuple[tuple[LimitCheck, str], ...] = (),
        refunds: tuple[tuple[LimitCheck, str], ...] = (),
        estimate: TokenEstimate | None = None,
        slot: Slot | SharedSlot | None = None,
    ) -> None:
        self.charges = charges
        self.refunds = refunds
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

    def _actual(self, status: int | None) -> dict[str, int] | None:
        """The actual tokens by unit (``tokens``, ``input_tokens``, ``output_tokens``), or
        ``None`` when the estimate stays."""
        usage = self.usage = self.parser.result() if self.parser is not None else None
        prompt_estimate = self.estimate.prompt if self.estimate is not None else 0
        if usage is not None:
            completion = usage.completion
            if usage.prompt is not None:
                prompt = usage.prompt
            elif usage.source == "usage" and usage.total is not None:
                prompt = max(0, usage.total - completion)
            else:
                prompt = prompt_estimate
            total = prompt + completion
            if usage.source == "usage" and usage.total is not None:
                total = usage.total
            return {"tokens": total, "input_tokens": prompt, "output_tokens": completion}
        if status is None or status >= 400:
            return {"tokens": 0, "input_tokens": 0, "output_tokens": 0}
        return None

    def settle(self, status: int | None) -> Generator[ChargeLimit | RefundLimit, object, None]:
        """The reconciliation effects (once; see the module docstring)."""
        if self._settled or not (self.charges or self.refunds):
            return
        self._settled = True
        if status is None or status >= 500:
            for check, mode in self.refunds:
                yield RefundLimit(check, check.cost, mode)
        if not self.charges:
            return
        actual = self._actual(status)
        if actual is None:
            return
        self.actual = actual["tokens"]
        for check, mode in self.charges:
            price = check.price
            used = (
                actual[check.unit]
                if price is None
                else price.micros(actual["input_tokens"], actual["output_tokens"])
            )
            diff = used - check.cost
            if diff > 0:
                yield ChargeLimit(check, diff, mode)
            elif diff < 0:
                yield RefundLimit(check, -diff, mode)

    def release(self) -> None:
        """Give an in-process concurrency slot back (idempotent; a lease on the shared storage
        goes back through :meth:`give_back`)."""
        if isinstance(self.slot, Slot):
            self.slot.release()

    @property
    def leased(self) -> bool:
        """Whether the request holds a lease on the shared storage not yet given back."""
        slot = self.slot
        return isinstance(slot, SharedSlot) and not slot.released

    def renewal(self, now: float) -> Generator[RenewSlot, object, None]:
        """Renew the lease when half of it has gone by (a long answer still streaming)."""
        slot = self.slot
        if isinstance(slot, SharedSlot) and slot.renewal_due(now):
            slot.renewed = now
            yield RenewSlot(slot.key, slot.token, int(slot.lease * 1000))

    def give_back(self) -> Generator[ReleaseSlot, object, None]:
        """Release the lease on the shared storage (once)."""
        slot = self.slot
        if isinstance(slot, SharedSlot) and not slot.released:
            slot.released = True
            yield ReleaseSlot(slot.key, slot.token)

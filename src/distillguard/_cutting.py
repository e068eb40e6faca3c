"""Cutting a streamed answer short once its client goes into the penalty box (sans-IO: the
adapters tell it what they send; ``Policy.stream_recheck`` says how often the client is checked,
:meth:`~distillguard.exchange.Exchange.recheck` checks it).

Only a successful answer without a declared length is cut (a ``Content-Length`` promises the
client every byte). A ``text/event-stream`` answer is cut between two events, never inside
one: the guard's ``error`` event then parses as an event of its own. Any other answer ends
where it is.
"""

from __future__ import annotations

__all__ = ["StreamCut"]

_BOUNDARIES = (b"\n\n", b"\r\r", b"\r\n\r\n")


class StreamCut:
    """Where an answer stands, for cutting it (see the module docstring)."""

    __slots__ = ("_tail", "armed", "done", "events")

    def __init__(self) -> None:
        self.armed = False  # a successful answer without a declared length started
        self.done = False  # the guard sent the answer's last bytes: the app's are dropped
        self.events = False  # a ``text/event-stream`` answer: cut between two events
        self._tail = b""

    def arm(self, status: int, content_type: str, sized: bool) -> None:
        """The answer started with ``status`` and ``content_type``; ``sized``: it declares its
        length (and keeps it)."""
        self.events = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        self.armed = 200 <= status < 300 and not sized

    def sent(self, body: bytes) -> None:
        """``body`` went to the client (its last bytes tell where an event ends)."""
        if body:
            self._tail = (self._tail + body)[-4:]

    def at_boundary(self) -> bool:
        """Whether the answer can end here: between two events, for an event stream."""
        return not self.events or not self._tail or self._tail.endswith(_BOUNDARIES)

"""One daemon thread that runs a task on a schedule, on demand, and never twice at once.

Used by :class:`~distillguard.identity.JWKSKeys`. The task (a fetch) runs only on this thread,
so the callers' threads never wait on the network; they only flip a flag under a short lock.
After a success the next run is due at ~0.8 x ``period`` (with +/-10 % jitter, so replicas do
not fetch in step); after failures it backs off exponentially (1, 2, 4... seconds, capped).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

__all__ = ["Refresher"]

MAX_BACKOFF = 60.0

_JITTER = random.Random()
"""The jitter's own generator: a library never draws from (or moves) the process's global
``random`` state, which an app or its tests may have seeded."""


class Refresher:
    """Runs ``task`` (which returns whether it succeeded) on one background thread.

    Args:
        task: the work; exceptions are the task's own business (it should not raise).
        period: after a success the next run is due at about ``0.8 * period``.
        cooldown: minimum seconds between runs asked for with :meth:`poke`.
        name: the thread name.
    """

    def __init__(self, task: Callable[[], bool], *, period: float, cooldown: float, name: str) -> None:
        self._task = task
        self._period = period
        self._cooldown = cooldown
        self._name = name
        self._stopped = False
        self._wanted = False
        self._next_at = 0.0
        self._last_attempt = -math.inf
        self.attempts = 0
        """Runs completed so far."""
        self.failures = 0
        """Consecutive failed runs (0 after a success)."""
        self._last_ok = False
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Forget the thread and lock (threads do not survive ``fork``; the child starts anew)."""
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._in_flight = False

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called (in this process)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (once); the first run begins at once."""
        with self._cond:
            if self._thread is None and not self._stopped:
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread = thread
                thread.start()

    def stop(self) -> None:
        """Stop the thread (a run in progress is abandoned to finish on its own)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=0.1)

    def poke(self, now: float) -> None:
        """Ask for a run unless one started less than ``cooldown`` ago. Cheap and non-blocking."""
        if now - self._last_attempt >= self._cooldown:
            with self._cond:
                if now - self._last_attempt >= self._cooldown:
                    self._wanted = True
                    self._cond.notify_all()

    def trigger(self, *, wait: float | None = None) -> bool:
        """Ask for a run that starts after this call, ignoring ``cooldown`` (a run already in
        flight is followed by another).

        With ``wait``, block up to that many seconds for the run to end and return whether it
        succeeded; without, return ``False`` at once.
        """
        self.start()
        with self._cond:
            target = self.attempts + (2 if self._in_flight else 1)
            self._wanted = True
            self._cond.notify_all()
            if wait is None:
                return False
            self._cond.wait_for(lambda: self.attempts >= target or self._stopped, timeout=wait)
            return self.attempts >= target and self._last_ok

    def ensure(self, ready: Callable[[], bool], timeout: float) -> None:
        """Unless ``ready()``, wait up to ``timeout`` seconds for ``ready()`` or for the end of a
        run: the first one (due at start), the one in flight, or else a new one."""
        self.start()
        with self._cond:
            if ready():
                return
            target = self.attempts + 1
            if not self._in_flight and self.attempts > 0:
                self._wanted = True
                self._cond.notify_all()
            self._cond.wait_for(lambda: ready() or self.attempts >= target or self._stopped, timeout=timeout)

    def retry_after(self, now: float) -> int:
        """Whole seconds until the next scheduled run (1 to 60)."""
        return max(1, min(int(MAX_BACKOFF), math.ceil(self._next_at - now)))

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._wanted or now >= self._next_at:
                        break
                    self._cond.wait(self._next_at - now)
                if self._stopped:
                    return
                self._wanted = False
                self._in_flight = True
                self._last_attempt = now
            ok = self._task()
            done = time.monotonic()
            with self._cond:
                self._in_flight = False
                self._last_ok = ok
                self.attempts += 1
                if ok:
                    self.failures = 0
                    self._next_at = done + self._period * 0.8 * _JITTER.uniform(0.9, 1.1)
                else:
                    self.failures += 1
                    backoff = min(2.0 ** (self.failures - 1), MAX_BACKOFF, self._period)
                    self._next_at = done + backoff * _JITTER.uniform(0.8, 1.2)
                self._cond.notify_all()

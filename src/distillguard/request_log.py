"""Recording the guarded requests as a request log that ``distillguard replay`` and
``distillguard calibrate`` read.

:class:`RequestLog` is an ``on_decision`` hook: ``Guard(on_decision=RequestLog("requests.jsonl"))``.
Each request that was authenticated and parsed becomes one line of the replay format (``ts``,
``client``, ``tenant``, ``path``, ``method``, ``ip``, ``headers`` with the user agent and content
type, ``body``, and the guard's ``decision``), so that a deployment can calibrate its thresholds
on its own benign traffic and look for extractors in its past traffic with the production
detectors.

The log holds the prompts, as the replay needs them: it is opt-in, created readable by its owner
only (mode 0600), and never written to the guard's logs or spans. On the request's path the hook
only formats the line and appends it to a bounded queue (a deque: no lock, no wake-up of the
writer per line); a writer thread wakes five times a second and writes what is queued, in
batches, through the standard library's :class:`logging.handlers.RotatingFileHandler`. When
the queue is full (the disk is slower than the traffic) the line is dropped and counted, never
waited for.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import threading
import zlib
from collections import deque
from json.encoder import encode_basestring_ascii
from logging.handlers import RotatingFileHandler
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .decision import Decision
    from .request import GuardRequest

__all__ = ["RequestLog"]

logger = logging.getLogger("distillguard.request_log")

_string = encode_basestring_ascii  # a str as a JSON string (the C encoder's)
_BATCH = 256  # lines written together
_INTERVAL = 0.2  # seconds between two writes
_JSON_KINDS = ("raw", "empty")  # the query kinds whose body is not a parsed JSON document


class _File(RotatingFileHandler):
    """A rotating file created readable by its owner only, whose write failures are counted
    instead of printed."""

    def __init__(self, path: str, max_bytes: int, backups: int, log: RequestLog) -> None:
        self._log = log
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", errors="replace")

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        failed = self._log.failed  # only this thread writes: a change is this batch's failure
        super().emit(record)
        if self._log.failed == failed:
            self._log._count("written", _lines(record))

    def handleError(self, record: logging.LogRecord) -> None:
        if self._log._count("failed", _lines(record)) == _lines(record):
            logger.warning("distillguard: the request log %s could not be written", self.baseFilename)


def _lines(record: logging.LogRecord) -> int:
    """How many log lines a batch record holds."""
    return str(record.msg).count("\n") + 1


class _Writer(threading.Thread):
    """The writer thread: it wakes every :data:`_INTERVAL` seconds (or when asked) and writes
    what was queued, up to :data:`_BATCH` lines to a record: one write and one flush for all of
    them. The request's thread only appends to a deque (no lock, no wake-up per line)."""

    def __init__(self, lines: deque[str], handler: logging.Handler) -> None:
        super().__init__(name="distillguard-request-log", daemon=True)
        self.lines = lines
        self.handler = handler
        self.wake = threading.Event()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            self.wake.wait(_INTERVAL)
            self.wake.clear()
            self.drain()
        self.drain()

    def drain(self) -> None:
        """Write every queued line."""
        lines = self.lines
        while lines:
            batch: list[str] = []
            with contextlib.suppress(IndexError):
                while len(batch) < _BATCH:
                    batch.append(lines.popleft())
            self.handler.handle(logging.makeLogRecord({"msg": "\n".join(batch), "levelno": logging.INFO}))

    def stop(self) -> None:
        """Write what is queued and end."""
        self.stopping = True
        self.wake.set()
        self.join()


class RequestLog:
    """Writes each decided request as one line of the replay format (an ``on_decision`` hook).

    Args:
        path: the file to append to. ``{pid}`` in it is replaced by the process id, for servers
            with several worker processes (each must write its own file; read them together
            with ``cat requests-*.jsonl | distillguard replay -``).
        sample: the share of clients recorded (0 to 1), chosen by a hash of the client id, so
            a recorded client's whole stream is in the log (the detectors need streams).
        served_only: record only the requests that reached the app (by default refusals that
            carried an identity and a parsed body are recorded too, with their ``decision``).
        max_bytes: rotate the file past this size (0: never; with ``logrotate``, use its
            ``copytruncate``).
        backups: how many rotated files to keep (``requests.jsonl.1`` ...).
        queue_size: lines held for the writer; past it lines are dropped and counted.

    Raises:
        ConfigurationError: a bad setting, or a file that cannot be opened for appending.

    Attributes:
        written: lines written so far in this process.
        dropped: lines dropped because the writer was behind.
        failed: lines the file refused (a full disk).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample: float = 1.0,
        served_only: bool = False,
        max_bytes: int = 0,
        backups: int = 5,
        queue_size: int = 10_000,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise ConfigurationError(f"RequestLog sample must be in (0, 1], not {sample!r}")
        if max_bytes < 0 or backups < 0 or queue_size < 1:
            raise ConfigurationError("RequestLog needs max_bytes >= 0, backups >= 0 and queue_size >= 1")
        self.template = os.fspath(path)
        self.sample = sample
        self.served_only = served_only
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_size = queue_size
        self._threshold = int(sample * 0x1_0000_0000)
        self.written = self.dropped = self.failed = 0
        self._counts_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pid = -1
        self._closed = False
        self._lines: deque[str] = deque()
        self._writer: _Writer | None = None
        _check_writable(self.path)  # fail at construction, not at the first request
        atexit.register(self.close)

    @property
    def path(self) -> str:
        """The file this process writes."""
        return self.template.replace("{pid}", str(os.getpid()))

    def __call__(self, decision: Decision, request: GuardRequest) -> None:
        """Queue ``request``'s line (the ``on_decision`` hook); never blocks, never raises on
        a full queue."""
        if self._closed or (self.served_only and decision.problem is not None):
            return
        line = self.line(decision, request)
        if line is None:
            return
        if self._pid != os.getpid():  # the first line here (a forked worker: its own writer)
            try:
                self._start()
            except OSError as exc:
                if self._count("failed") == 1:
                    logger.warning("distillguard: the request log %s cannot be opened: %s", self.path, exc)
                return
        if len(self._lines) >= self.queue_size:
            if self._count("dropped") == 1:
                logger.warning("distillguard: the request log %s is behind; lines are dropped", self.path)
            return
        self._lines.append(line)

    def line(self, decision: Decision, request: GuardRequest) -> str | None:
        """The log line of ``request`` (``None``: not recorded: no identity, no parsed body,
        or a client outside the sample)."""
        identity, query = decision.identity, decision.query
        if identity is None or query is None:
            return None
        client = identity.client_id
        if self.sample < 1.0 and zlib.crc32(client.encode("utf-8", "replace")) >= self._threshold:
            return None
        # built by hand: json.dumps of the same mapping costs three times as much
        parts = [
            f'{{"ts": {request.timestamp:.6f}, "client": ',
            _string(client),
            ', "path": ',
            _string(request.path),
            ', "method": ',
            _string(request.method),
            ', "decision": "',
            decision.action.value,
            '"',
        ]
        if identity.tenant:
            parts += (', "tenant": ', _string(identity.tenant))
        if request.client_address:
            parts += (', "ip": ', _string(request.client_address))
        headers = []
        if request.user_agent:
            headers.append('"user-agent": ' + _string(request.user_agent))
        if request.content_type:
            headers.append('"content-type": ' + _string(request.content_type))
        if headers:
            parts += (', "headers": {', ", ".join(headers), "}")
        body = request.body
        if query.kind not in _JSON_KINDS and body[:1] in (b"{", b"["):
            # a parsed JSON document, as sent: its line breaks can only be whitespace
            text = body.decode("utf-8", "replace").replace("\n", " ").replace("\r", " ")
        else:
            text = _string(body.decode("utf-8", "replace"))
        parts += (', "body": ', text, "}")
        return "".join(parts)

    def flush(self) -> None:
        """Write every queued line (waits for the writer), then keep recording."""
        with self._lock:
            writer = self._writer
            if writer is None or self._pid != os.getpid():
                return
            writer.stop()
            writer.handler.flush()
            self._writer = _Writer(self._lines, writer.handler)
            self._writer.start()

    def close(self) -> None:
        """Write every queued line and close the file (recording stops)."""
        with self._lock:
            writer, self._writer, self._closed = self._writer, None, True
            if writer is None:
                return
            if self._pid == os.getpid():
                writer.stop()
            with contextlib.suppress(OSError):  # a full disk: its lines are counted failed
                writer.handler.close()

    def _start(self) -> None:
        """Open this process's file and start its writer (a forked worker's queue starts
        empty: the parent's lines are the parent's)."""
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            handler = _File(self.path, self.max_bytes, self.backups, self)
            self._lines = deque()
            writer = _Writer(self._lines, handler)
            writer.start()
            self._writer, self._pid = writer, os.getpid()

    def _count(self, name: str, n: int = 1) -> int:
        with self._counts_lock:
            value: int = getattr(self, name) + n
            setattr(self, name, value)
            return value


def _check_writable(path: str) -> None:
    """Raise :class:`ConfigurationError` unless ``path`` can be created or appended to (without
    creating it: a process that never records leaves no file)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigurationError(f"the request log {path} cannot be opened: it is a directory")
    if not os.path.isdir(folder):
        raise ConfigurationError(f"the request log {path} cannot be opened: no directory {folder}")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise ConfigurationError(f"the request log {path} cannot be opened: not writable")

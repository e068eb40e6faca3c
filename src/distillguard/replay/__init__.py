"""Offline replay: a request log through the same pipeline as the middleware.

``distillguard replay LOG.jsonl --json report.json --html report.html`` replays a log;
``distillguard calibrate BENIGN.jsonl --out thresholds.json`` derives detector thresholds from
benign traffic. The pieces, for use from Python:

* :func:`~distillguard.replay.log.open_log` opens a log (a file, gzip or not, or standard
  input) and :func:`~distillguard.replay.log.read_log` reads its format (one JSON object per
  line);
* :class:`~distillguard.replay.engine.ReplayEngine` replays it through a :class:`~distillguard.Guard`;
* :func:`~distillguard.replay.report.build_report` and
  :func:`~distillguard.replay.html.render_html` write the reports;
* :mod:`~distillguard.replay.calibration` computes and applies thresholds.
"""

from __future__ import annotations

from .calibration import Thresholds, calibrate, percentile
from .engine import FLAGGED_ACTIONS, ReplayEngine, ReplayResult, offline_guard, offline_policy
from .html import render_html, write_html
from .log import DEFAULT_ROUTES, LogRecord, LogStats, RouteMatcher, open_log, read_log
from .report import build_report, write_json
from .setup import default_detector_names, resolve_detectors

__all__ = [
    "DEFAULT_ROUTES",
    "FLAGGED_ACTIONS",
    "LogRecord",
    "LogStats",
    "ReplayEngine",
    "ReplayResult",
    "RouteMatcher",
    "Thresholds",
    "build_report",
    "calibrate",
    "default_detector_names",
    "offline_guard",
    "offline_policy",
    "open_log",
    "percentile",
    "read_log",
    "render_html",
    "resolve_detectors",
    "write_html",
    "write_json",
]

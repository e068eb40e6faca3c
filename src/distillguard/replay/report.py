"""The replay report as JSON.

Schema (every client of the log is listed, most suspicious first)::

    {
      "clients": [
        {"client": str, "requests": int, "flagged": int,
         "first_flag_request": int | null,   # 1-based, in that client's own stream
         "first_flag_ts": float | null, "max_risk": float,
         "signals": {detector: highest score},
         "online": {decision: count} | null}   # what the guard decided when the log was
                                               # recorded (RequestLog's ``decision``), if logged
      ],
      "campaigns": [
        {"id", "clients", "size", "requests", "first_flag_ts", "max_risk",
         "template_families", "cadence_seconds", "linked_unflagged", "linked_unflagged_count"}
      ],
      "summary": {
        "lines", "replayed", "clients", "flagged_clients", "flagged_requests",
        "client_days", "flagged_client_days",   # active and flagged (client, UTC day) pairs
        "campaigns",
        "malformed": {"count", "first_lines"}, "out_of_order": {...}, "unknown_path": {...},
        "oversized": {...}, "unparsed_bodies": {...},
        "first_ts", "last_ts", "detectors", "policy", "errors", "seconds", "lines_per_second",
        "online": null | {"clients", "flagged_clients",   # clients with logged decisions; flagged then
                          "flagged_now_only", "flagged_then_only"}  # what the replay changes
      }
    }
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .engine import FLAGGED_ACTIONS, ReplayResult
from .output import write_atomic
from .track import ClientTrack

__all__ = ["build_report", "client_entry", "write_json"]


def _round(value: float) -> float:
    return round(value, 6)


def client_entry(track: ClientTrack) -> dict[str, Any]:
    """One client's entry of the report."""
    return {
        "client": track.client,
        "requests": track.requests,
        "flagged": track.flagged,
        "first_flag_request": track.first_flag_request,
        "first_flag_ts": track.first_flag_ts,
        "max_risk": _round(track.max_risk),
        "signals": {name: _round(score) for name, score in track.signal_map().items()},
        "online": None if track.online is None else dict(sorted(track.online.items())),
    }


_FLAGGED = frozenset(a.value for a in FLAGGED_ACTIONS)


def _flagged_online(track: ClientTrack) -> bool:
    return track.online is not None and any(track.online[a] for a in _FLAGGED)


def _online(ranked: list[ClientTrack]) -> dict[str, int] | None:
    """How the replay's verdicts compare with the decisions the log records (``None``: the log
    records none)."""
    logged = [t for t in ranked if t.online is not None]
    if not logged:
        return None
    now = {t.client for t in logged if t.first_flag_request is not None}
    then = {t.client for t in logged if _flagged_online(t)}
    return {
        "clients": len(logged),
        "flagged_clients": len(then),
        "flagged_now_only": len(now - then),
        "flagged_then_only": len(then - now),
    }


def _policy(result: ReplayResult) -> dict[str, Any]:
    risk = result.policy.risk
    if risk is None:
        p = result.policy
        return {"flag": p.flag, "degrade": p.degrade, "block": p.block}
    return {
        "risk": True,
        "flag": risk.flag,
        "degrade": risk.degrade,
        "block": risk.block,
        "half_life": risk.half_life,
        "thresholds": dict(sorted(risk.thresholds.items())),
    }


def build_report(result: ReplayResult) -> dict[str, Any]:
    """The report of ``result`` as a JSON-ready mapping (schema in the module docstring)."""
    stats = result.stats
    ranked = result.ranked()
    return {
        "clients": [client_entry(t) for t in ranked],
        "campaigns": result.campaigns,
        "summary": {
            "lines": stats.lines,
            "replayed": stats.replayed,
            "clients": len(ranked),
            "flagged_clients": sum(1 for t in ranked if t.first_flag_request is not None),
            "flagged_requests": sum(t.flagged for t in ranked),
            "client_days": sum(t.days for t in ranked),
            "flagged_client_days": sum(t.flagged_days for t in ranked),
            "campaigns": len(result.campaigns),
            "malformed": stats.malformed.as_dict(),
            "out_of_order": stats.out_of_order.as_dict(),
            "unknown_path": stats.unknown_path.as_dict(),
            "oversized": stats.oversized.as_dict(),
            "unparsed_bodies": stats.unparsed_bodies.as_dict(),
            "first_ts": stats.first_ts,
            "last_ts": stats.last_ts,
            "detectors": list(result.detectors),
            "policy": _policy(result),
            "errors": dict(sorted(result.errors.items())),
            "seconds": round(result.seconds, 3),
            "lines_per_second": round(result.lines_per_second, 1),
            "online": _online(ranked),
        },
    }


def write_json(report: dict[str, Any], path: str | Path) -> None:
    """Write ``report`` to ``path`` (UTF-8, indented), replacing it whole (see
    :func:`~distillguard.replay.output.write_atomic`). A string that is not valid Unicode (a lone
    surrogate) is written as its JSON escape, ``\\ud800``, rather than failing the report.

    Raises:
        OSError: when the file cannot be written.
    """
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8", "backslashreplace"))

"""The replay report as one self-contained HTML page: no scripts, no network, inline SVG plots.

The page shows the summary, the campaigns, the table of the top clients and, for each flagged
client among them, its risk over time (with the policy's flag threshold and the first flag).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .engine import ReplayResult
from .output import write_atomic
from .report import build_report
from .track import ClientTrack

__all__ = ["render_html", "risk_svg", "write_html"]

_W, _H = 640, 170
_L, _R, _T, _B = 44, 12, 10, 28

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#1d232b;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.flag{color:#b42318;font-weight:600}.ok{color:#5b6573}
figure{margin:1.2em 0}figcaption{font-size:13px;color:#333}
svg text{font:11px system-ui,sans-serif;fill:#5b6573}
code{font-size:12px}
"""


def _utc(ts: float | None, *, zone: bool = False) -> str:
    """``ts`` as a UTC date and time (`` UTC`` appended when ``zone``); a timestamp outside the
    calendar's range (milliseconds logged as seconds, say) is shown as the raw number."""
    if ts is None:
        return "-"
    try:
        text = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return f"ts {ts!r}"
    return f"{text} UTC" if zone else text


def risk_svg(
    points: Sequence[tuple[float, float]],
    *,
    threshold: float,
    first_flag_ts: float | None,
    label: str,
) -> str:
    """An inline SVG line plot of ``(time, risk)`` points (risk in [0, 1])."""
    width, height = _W - _L - _R, _H - _T - _B
    if points:
        t0, t1 = points[0][0], points[-1][0]
    else:
        t0 = t1 = 0.0
    span = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return _L + (t - t0) / span * width

    def y(v: float) -> float:
        return _T + (1.0 - min(1.0, max(0.0, v))) * height

    parts = [
        f'<svg class="risk" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(label)}">',
        f'<rect x="{_L}" y="{_T}" width="{width}" height="{height}" fill="#fafbfc" stroke="#d0d5dd"/>',
    ]
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    parts.append(
        f'<line x1="{_L}" x2="{_L + width}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
        'stroke="#b42318" stroke-dasharray="4 3"/>'
    )
    if len(points) == 1:
        parts.append(
            f'<circle cx="{x(points[0][0]):.1f}" cy="{y(points[0][1]):.1f}" r="2.5" fill="#1f6feb"/>'
        )
    elif points:
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{coords}"/>')
    if first_flag_ts is not None and points:
        fx = x(min(max(first_flag_ts, t0), t1))
        parts.append(
            f'<line x1="{fx:.1f}" x2="{fx:.1f}" y1="{_T}" y2="{_T + height}" '
            'stroke="#b42318" stroke-width="1"/>'
        )
    parts.append(f'<text x="{_L}" y="{_H - 8}">{_utc(t0, zone=True)}</text>')
    parts.append(f'<text x="{_L + width}" y="{_H - 8}" text-anchor="end">{_utc(t1, zone=True)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _signals(signals: dict[str, float], limit: int = 4) -> str:
    top = sorted(((k, v) for k, v in signals.items() if v > 0), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{escape(name)} {score:.2f}" for name, score in top) or "-"


def _online(counts: dict[str, int] | None) -> str:
    """The decisions the log records for a client (most frequent first)."""
    if not counts:
        return "-"
    return ", ".join(f"{escape(k)} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _client_rows(entries: Sequence[dict[str, Any]], online: bool = False) -> str:
    rows = []
    for e in entries:
        flagged = e["first_flag_request"] is not None
        cls = "flag" if flagged else "ok"
        rows.append(
            f'<tr><td class="{cls}">{escape(e["client"])}</td><td class="n">{e["requests"]:,}</td>'
            f'<td class="n">{e["flagged"]:,}</td>'
            f'<td class="n">{e["first_flag_request"] if flagged else "-"}</td>'
            f'<td>{_utc(e["first_flag_ts"])}</td><td class="n">{e["max_risk"]:.3f}</td>'
            f"<td>{_signals(e['signals'])}</td>"
            + (f"<td>{_online(e['online'])}</td>" if online else "")
            + "</tr>"
        )
    return "".join(rows)


def _campaign_rows(campaigns: Sequence[dict[str, Any]]) -> str:
    rows = []
    for c in campaigns:
        members = ", ".join(escape(m) for m in c["clients"][:12])
        more = f" (+{len(c['clients']) - 12} more)" if len(c["clients"]) > 12 else ""
        links = []
        if c["template_families"]:
            links.append(f"template {escape(', '.join(c['template_families']))}")
        if c["cadence_seconds"] is not None:
            links.append(f"cadence {c['cadence_seconds']:g} s")
        rows.append(
            f'<tr><td>{escape(c["id"])}</td><td class="n">{c["size"]}</td>'
            f'<td class="n">{c["requests"]:,}</td><td>{_utc(c["first_flag_ts"])}</td>'
            f"<td>{'; '.join(links) or 'network/tenant + request shape'}</td>"
            f'<td class="n">{c["linked_unflagged_count"]}</td><td>{members}{more}</td></tr>'
        )
    return "".join(rows)


def render_html(result: ReplayResult, *, top: int = 25, report: dict[str, Any] | None = None) -> str:
    """The HTML report of ``result``: summary, campaigns, the ``top`` clients, and a risk plot
    for each flagged client among them."""
    report = report if report is not None else build_report(result)
    summary = report["summary"]
    entries = report["clients"][: max(0, top)]
    threshold = result.policy.risk.flag if result.policy.risk is not None else result.policy.flag
    figures = []
    for entry in entries:
        if entry["first_flag_request"] is None:
            continue
        track: ClientTrack = result.tracks[entry["client"]]
        name = entry["client"]
        svg = risk_svg(
            track.series.points(),
            threshold=threshold,
            first_flag_ts=track.first_flag_ts,
            label=f"risk of {name}",
        )
        figures.append(
            f'<figure id="client-{escape(name)}">{svg}<figcaption><b>{escape(name)}</b>: risk over time, '
            f"{entry['requests']:,} requests, first flagged at request {entry['first_flag_request']} "
            f"({_utc(entry['first_flag_ts'], zone=True)}); dashed line: flag threshold {threshold:g}."
            "</figcaption></figure>"
        )
    issues = ", ".join(
        f"{summary[k]['count']:,} {k.replace('_', ' ')}"
        for k in ("malformed", "out_of_order", "unknown_path", "oversized", "unparsed_bodies")
    )
    head = (
        "<tr><th>client</th><th class=n>requests</th><th class=n>flagged</th><th class=n>first flag</th>"
        "<th>first flag (UTC)</th><th class=n>max risk</th><th>top signals</th>"
        + ("<th>decided online</th>" if summary["online"] else "")
        + "</tr>"
    )
    online = summary["online"]
    compared = (
        f"<p>The log records the guard's decisions for {online['clients']:,} clients: "
        f"{online['flagged_clients']:,} were flagged (or refused) then; this replay flags "
        f"{online['flagged_now_only']:,} of them that were not, and no longer flags "
        f"{online['flagged_then_only']:,} that were.</p>"
        if online
        else ""
    )
    campaign_head = (
        "<tr><th>campaign</th><th class=n>flagged accounts</th><th class=n>requests</th>"
        "<th>first flag (UTC)</th><th>shared</th><th class=n>linked unflagged</th><th>accounts</th></tr>"
    )
    campaigns = report["campaigns"]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>distillguard replay report</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>distillguard replay report</h1>"
        f"<p>{summary['lines']:,} lines, {summary['replayed']:,} requests replayed from "
        f"{summary['clients']:,} clients between {_utc(summary['first_ts'], zone=True)} "
        f"and {_utc(summary['last_ts'], zone=True)}; "
        f"<span class=flag>{summary['flagged_clients']:,} clients flagged</span>, "
        f"{summary['campaigns']:,} campaigns. Skipped or adjusted lines: {issues}. "
        f"Detectors: <code>{escape(', '.join(summary['detectors']) or 'none')}</code>. "
        f"Replayed at {summary['lines_per_second']:,.0f} lines/s.</p>"
        + compared
        + "<h2>Campaigns</h2>"
        + (
            f"<table>{campaign_head}{_campaign_rows(campaigns)}</table>"
            if campaigns
            else "<p>None found.</p>"
        )
        + f"<h2>Top {len(entries)} clients</h2><table>{head}{_client_rows(entries, bool(online))}</table>"
        + "<h2>Risk over time of the flagged clients</h2>"
        + ("".join(figures) or "<p>No client was flagged.</p>")
        + "</body></html>\n"
    )


def write_html(
    result: ReplayResult, path: str | Path, *, top: int = 25, report: dict[str, Any] | None = None
) -> None:
    """Write the HTML report of ``result`` to ``path``, replacing it whole (see
    :func:`~distillguard.replay.output.write_atomic`); a character that is not valid Unicode (a
    lone surrogate) becomes ``?`` rather than failing the report.

    Raises:
        OSError: when the file cannot be written.
    """
    write_atomic(path, render_html(result, top=top, report=report).encode("utf-8", "replace"))

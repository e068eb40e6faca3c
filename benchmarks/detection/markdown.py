# ruff: noqa: E501  (Markdown table rows read best on one line)
"""The benchmark's results as Markdown tables, spliced into ``docs/detection.md`` between
the ``<!-- benchmark:start -->`` and ``<!-- benchmark:end -->`` markers."""

from __future__ import annotations

from pathlib import Path

from .harness import Metrics
from .scenarios import SHARES
from .vectors import VECTOR_TARGETS

__all__ = ["render", "section", "splice", "vector_section"]

START = "<!-- benchmark:start -->"
END = "<!-- benchmark:end -->"
TARGETS = {
    "template": "100% within 100, 0 FP",
    "coverage": "TPR >= 99% (1,500-query window)",
    "random_words": "(no published target)",
    "probe": "100% within 20, 0 FP on logit_bias users",
    **VECTOR_TARGETS,
}


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:.1f}% ({num}/{den})" if den else "-"


def _families(m: Metrics) -> list[str]:
    rows = [
        "| attack (one client) | clients | queries each | caught within N | N | caught at all | median queries to detection | worst | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for family, f in m.families.items():
        rows.append(
            f"| {family} | {f['clients']} | {f['queries']} | {_pct(f['caught_within'], f['clients'])} | {f['within']} "
            f"| {_pct(f['caught'], f['clients'])} | {_num(f['median'])} | {_num(f['max'])} | {TARGETS.get(family, '')} |"
        )
    return rows


def _mixed(m: Metrics) -> list[str]:
    families = sorted({family for family, _ in m.mixed if family != "none"})
    head = (
        "| attack mixed into a heavy benign user | " + " | ".join(f"{round(s * 100)}%" for s in SHARES) + " |"
    )
    rows = [head, "|---|" + "---|" * len(SHARES)]
    for family in families:
        cells = []
        for share in SHARES:
            cell = m.mixed.get((family, share))
            if cell is None:
                cells.append("-")
                continue
            cells.append(f"{_pct(cell['caught'], cell['clients'])}, median {_num(cell['median'])} q")
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
    control = m.mixed.get(("none", 0.0))
    if control is not None:
        rows.append(
            f"| (0%: same heavy users, no attack: false alarms) | {_pct(control['caught'], control['clients'])} |"
            + " |" * (len(SHARES) - 1)
        )
    return rows


def _campaigns(m: Metrics) -> list[str]:
    rows = [
        "| campaign | accounts | queries | accounts flagged | served before 1st account flagged | served before 2nd (a campaign can exist) | largest group found by replay |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in m.campaigns.items():
        first = "never" if c["first"] is None else f"{100 * c['first']:.1f}%"
        second = "never" if c["second"] is None else f"{100 * c['second']:.1f}%"
        rows.append(
            f"| {name} | {c['accounts']} | {c['queries']:,} | {c['flagged_accounts']} | {first} | {second} | {c['grouped']} accounts |"
        )
    return rows


def _benign(m: Metrics) -> list[str]:
    rows = [
        "| benign kind | clients | clients flagged | client-days | flagged client-days |",
        "|---|---|---|---|---|",
    ]
    b = m.benign
    for kind, (clients, flagged) in sorted(m.benign_clients.items()):
        days = b.days.get(kind)
        rows.append(
            f"| {kind.partition(':')[2]} | {clients} | {flagged} | {_num(days)} | "
            f"{_pct(b.flagged.get(kind, 0), days) if days else '-'} |"
        )
    if b.total:
        total_clients = sum(c for c, _ in m.benign_clients.values())
        total_flagged = sum(f for _, f in m.benign_clients.values())
        rows.append(
            f"| **all** | {total_clients} | {total_flagged} | {b.total:,} | {_pct(b.total_flagged, b.total)} |"
        )
    return rows


def _heading(title: str, m: Metrics, note: str) -> list[str]:
    """A run's title, its note and how fast its log replayed."""
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    out += [
        f"{m.lines:,} log lines replayed in {m.seconds:,.1f} s ({m.lines / m.seconds if m.seconds else 0:,.0f} lines/s).",
        "",
    ]
    return out


def section(title: str, m: Metrics, note: str = "") -> list[str]:
    """All tables of one run."""
    out = _heading(title, m, note)
    out += ["**False positives (benign clients)**", "", *_benign(m), ""]
    out += ["**Single-client attacks**", "", *_families(m), ""]
    out += [
        "**Mixed traffic** (share of a heavy user's 1,500 requests that are attack queries; detection = the client is flagged within its stream)",
        "",
        *_mixed(m),
        "",
    ]
    out += [
        "**Multi-account campaigns** (share of the campaign's queries served before the flag)",
        "",
        *_campaigns(m),
        "",
    ]
    return out


def vector_section(title: str, m: Metrics, note: str = "") -> list[str]:
    """The tables of a classifier-endpoint run: benign vector clients and single-client attacks."""
    out = _heading(title, m, note)
    out += ["**False positives (benign vector clients)**", "", *_benign(m), ""]
    out += ["**Single-client attacks on the classifier**", "", *_families(m), ""]
    return out


def render(header: list[str], sections: list[list[str]]) -> str:
    """The generated part of the document."""
    lines = [START, *header, ""]
    for s in sections:
        lines += s
    lines.append(END)
    return "\n".join(lines) + "\n"


def splice(doc: Path, generated: str) -> None:
    """Replace the generated part of ``doc`` (or append it)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    if START in text and END in text:
        before = text.split(START)[0]
        after = text.split(END, 1)[1].lstrip("\n")
        text = before + generated + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + generated
    doc.write_text(text, encoding="utf-8")

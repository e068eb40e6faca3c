"""What the benchmark scripts share to report: the commit measured and a generated section of a
Markdown file."""

from __future__ import annotations

import re
import time
from pathlib import Path

__all__ = ["reference_ms", "replace_section"]


def replace_section(path: Path, start: str, end: str, report: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``path`` with ``report``
    (or append the marked section), leaving the rest alone."""
    block = f"{start}\n{report}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def reference_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop, to compare machines (best of 5)."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i & 7
        best = min(best, time.process_time() - start)
    return best * 1e3

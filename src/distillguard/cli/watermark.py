"""``distillguard watermark verify FILE...``: is a suspect model's output marked with our key?

The key is read from ``DISTILLGUARD_WATERMARK_KEY`` (never from the command line, which shells
keep in their history). Each ``.jsonl`` file holds one JSON value per line: a string, an object
with a ``text``, ``content``, ``output``, ``completion`` or ``response`` string, or an
OpenAI-style answer (``choices[].message.content`` / ``choices[].text``); any other file is one
text. Exit status 0 when the watermark is found (p-value below ``--alpha``), 1 when it is not, 2
on a bad input or setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..watermark import Watermark

__all__ = ["register", "run", "texts_of"]

_FIELDS = ("text", "content", "output", "completion", "response")


def register(subparsers: Any) -> None:
    """Add the ``watermark`` sub-command."""
    parser = subparsers.add_parser(
        "watermark",
        help="test whether texts carry the response watermark",
        description=(
            "Test a suspect model's outputs for the keyed watermark of the answers the guard "
            "served (key: $DISTILLGUARD_WATERMARK_KEY). Exit status 0 when it is found, 1 when "
            "not, 2 on a bad input or setting."
        ),
    )
    sub = parser.add_subparsers(dest="action", required=True)
    verify = sub.add_parser("verify", help="test texts for the watermark")
    verify.add_argument("files", nargs="+", type=Path, help=".jsonl files of outputs, or text files")
    verify.add_argument(
        "--alpha", type=float, default=1e-6, help="p-value below which it is found (default 1e-6)"
    )
    verify.add_argument("--json", action="store_true", help="print the evidence as JSON")
    verify.set_defaults(func=run)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        return
    if not isinstance(value, dict):
        return
    for name in _FIELDS:
        if isinstance(value.get(name), str):
            yield value[name]
            return
    for choice in value.get("choices") or ():
        if isinstance(choice, dict):
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                yield message["content"]
            elif isinstance(choice.get("text"), str):
                yield choice["text"]


def texts_of(path: Path) -> Iterator[str]:
    """The texts in ``path`` (see the module docstring).

    Raises:
        ValueError: for a ``.jsonl`` line that is not JSON (with its line number).
    """
    if path.suffix != ".jsonl":
        yield path.read_text("utf-8", errors="replace")
        return
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON") from exc
            yield from _strings(value)


def run(args: argparse.Namespace) -> int:
    """Test the files; print the evidence."""
    key = os.environ.get("DISTILLGUARD_WATERMARK_KEY", "")
    if not 0.0 < args.alpha < 1.0:
        print("distillguard watermark: --alpha must be in (0, 1)", file=sys.stderr)
        return 2
    try:
        watermark = Watermark(key)
        texts = [text for path in args.files for text in texts_of(path)]
    except (ConfigurationError, OSError, ValueError) as exc:
        print(f"distillguard watermark: {exc}", file=sys.stderr)
        if not key:
            print("set DISTILLGUARD_WATERMARK_KEY to the key the guard marked with", file=sys.stderr)
        return 2
    evidence = watermark.evidence(texts)
    found = evidence.p_value < args.alpha
    if args.json:
        print(json.dumps({"texts": len(texts), **dataclasses.asdict(evidence), "found": found}))
    else:
        print(
            f"{len(texts)} texts, {evidence.trials} trials, {evidence.hits} hits "
            f"({evidence.expected:.1f} expected without the watermark): z = {evidence.z:.2f}, "
            f"p = {evidence.p_value:.3g}; watermark {'FOUND' if found else 'not found'} "
            f"at alpha {args.alpha:g}"
        )
    return 0 if found else 1

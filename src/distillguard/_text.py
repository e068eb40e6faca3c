"""Whether a string is text: JSON escapes (``"\\ud800"``) can make lone surrogates, which UTF-8
cannot encode, so Redis, the OTLP exporters and the reports refuse them."""

from __future__ import annotations

__all__ = ["is_text"]


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (has no lone surrogate)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

"""Writing the offline commands' files: checked before the work, replaced whole after it.

A replay of a large log takes minutes, so :func:`unwritable` lets a command refuse a path it
could not write *before* it starts; :func:`write_atomic` writes to a temporary file beside the
target and renames it over the target, so a failure never leaves an empty or half-written
report in place of the previous one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["unwritable", "write_atomic"]


def _special(target: Path) -> bool:
    """Whether ``target`` exists and is neither a regular file nor a directory (a device or a
    pipe, such as ``/dev/stdout``): written in place, as there is nothing to replace."""
    return target.exists() and not target.is_file() and not target.is_dir()


def unwritable(path: str | Path) -> str | None:
    """Why ``path`` cannot be written, or ``None`` when its directory exists and is writable
    and it is not itself a directory."""
    target = Path(path)
    try:
        if target.is_dir():
            return f"{str(target)!r} is a directory"
        if _special(target):
            return None if os.access(target, os.W_OK) else f"{str(target)!r} is not writable"
        parent = Path(os.path.realpath(target)).parent  # a symbolic link's file is replaced
        if not parent.is_dir():
            return f"directory {str(target.parent)!r} does not exist"
    except OSError as exc:  # a name too long, say
        return exc.strerror or str(exc)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {str(parent)!r} is not writable"
    return None


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, renamed over
    ``path`` once complete, so the previous file stays intact on failure (a symbolic link's
    file is replaced, the link kept; a device or pipe is written in place).

    Raises:
        OSError: when the file cannot be written.
    """
    target = Path(path)
    if _special(target):
        with open(target, "wb") as out:
            out.write(data)
        return
    target = Path(os.path.realpath(target))
    temporary = target.with_name(f".{target.name[:64]}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as out:  # the usual permissions, unlike mkstemp's 0600
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise

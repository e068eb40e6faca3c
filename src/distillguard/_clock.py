"""The guard's clock: unix seconds that never step.

:func:`steady_time` reads :func:`time.monotonic` shifted by the wall clock's offset when the
package was imported. It reads like :func:`time.time`, but an NTP step or an operator setting
the date neither lengthens nor shortens a limit window, a penalty or a risk's decay: they are
measured in real seconds. Token expiry is the exception and uses the wall clock (``exp`` is
the issuer's wall time).
"""

from __future__ import annotations

import time

__all__ = ["steady_time"]

_OFFSET = time.time() - time.monotonic()


def steady_time() -> float:
    """Now, in unix seconds as of the import, advancing with :func:`time.monotonic`."""
    return _OFFSET + time.monotonic()

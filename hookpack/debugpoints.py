"""Debug-only trace points inside kernel applies, for the crash tests; off by default.

Nothing happens unless the hook process's environment sets one of:

- ``HOOKPACK_DEBUG_APPLY_TRACE=<file>``: append ``<pid> <point>`` per point reached;
- ``HOOKPACK_DEBUG_APPLY_PAUSE_MS=<ms>``: sleep that long at every point.

Ganeti clears a hook's environment (only ``GANETI_*`` and ``PATH`` reach it), so a
production hook run never sees them. tests/reliability/test_crash.py uses them to kill
hook processes inside shaping and pinning applies and to tell where each kill landed.
"""

from __future__ import annotations

import os
import time

TRACE = "HOOKPACK_DEBUG_APPLY_TRACE"
PAUSE = "HOOKPACK_DEBUG_APPLY_PAUSE_MS"


def point(name: str) -> None:
    trace = os.environ.get(TRACE)
    pause = os.environ.get(PAUSE)
    if not trace and not pause:
        return
    if trace:
        fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {name}\n".encode())
        finally:
            os.close(fd)
    if pause:
        time.sleep(max(0.0, min(5.0, float(pause) / 1000)))

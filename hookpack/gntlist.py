"""`gnt-instance list` as rows of fields, for the commands that read Ganeti on the master."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from hookpack.errors import ActionError

SEPARATOR = "|"
TIMEOUT = 120.0


def instance_rows(fields: Sequence[str],
                  run: Callable[..., Any] = subprocess.run) -> list[list[str]]:
    """One row per instance: the ``fields`` Ganeti gives, as text, in that order."""
    argv = ["gnt-instance", "list", "--no-headers", f"--separator={SEPARATOR}",
            "-o", ",".join(fields)]
    try:
        done = run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ActionError(f"cannot run gnt-instance list: {err}; run this on the master") \
            from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ActionError(f"gnt-instance list failed ({last}); run this on the master")
    return split_rows(done.stdout, len(fields))


def split_rows(text: str, width: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.strip():
            cells = [c.strip() for c in line.split(SEPARATOR, width - 1)]
            rows.append(cells + [""] * (width - len(cells)))
    return rows

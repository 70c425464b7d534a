"""Running commands for the lab: argument lists, bounded run time, errors with context."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from vmtestbed.ganeti.errors import CommandFailed

log = logging.getLogger("vmtestbed.ganeti")


def run(
    argv: Sequence[str],
    *,
    where: str = "host",
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (in ``env``, default ours); raise :class:`CommandFailed` on a non-zero
    exit when ``check``."""
    log.debug("%s: %s", where, " ".join(argv))
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env=env,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(where, proc)
    return proc


def pids_in_netns(netns_path: str) -> list[int]:
    """Pids of the processes whose network namespace is the one bound at ``netns_path``.

    Everything in a lab node's namespace was started by the lab (the holder, Ganeti's
    daemons, sshd, QEMU): that is how ``down`` knows what it may kill.
    """
    try:
        st = os.stat(netns_path)
    except FileNotFoundError:
        return []
    want = f"net:[{st.st_ino}]"
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") == want:
                out.append(int(entry))
        except OSError:
            continue
    return out


def kill_pids(pids: Sequence[int], *, grace: float = 5.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, then SIGKILL what is left."""
    alive = list(pids)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        _reap(alive)
        alive = [p for p in alive if _exists(p)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    _reap(alive)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # a zombie (state Z) is dead for our purposes
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _reap(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

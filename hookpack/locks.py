"""Node-wide locks: hooks for different instances run at the same moment on one node."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from hookpack.errors import LockTimeout

_HELD: list[int] = []  # fds of the node locks this process holds


def held_lock_fds() -> tuple[int, ...]:
    """The node locks held here, for ``pass_fds`` of a child that writes kernel state.

    A child that inherits them keeps the lock until it exits too: a hook killed while its
    ``iptables-restore`` still commits cannot let the next run read the rules halfway.
    """
    return tuple(_HELD)


@contextlib.contextmanager
def node_lock(run_dir: Path, name: str, timeout: float) -> Iterator[None]:
    """Hold ``<run_dir>/<name>.lock`` exclusively; give up after ``timeout`` seconds.

    flock locks die with their process, so a hook killed mid-apply never leaves a
    stale lock behind.
    """
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = run_dir / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        give_up = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= give_up:
                    raise LockTimeout(
                        f"lock {path} is held by another hookpack run for over {timeout:.1f} s"
                    ) from None
                time.sleep(0.01)
        _HELD.append(fd)
        yield
    finally:
        if fd in _HELD:
            _HELD.remove(fd)
        os.close(fd)

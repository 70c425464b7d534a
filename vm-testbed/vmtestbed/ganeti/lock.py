"""One lab per machine: an exclusive lock so lab users take turns.

The lab's names (``node1.example.test`` in ``/etc/hosts``), netns and state directory
are machine-wide, so two test sessions (or a session and a human) must never build,
use or tear down a lab at the same time. A test session or the demo holds the lock
for its whole run; ``vm-testbed ganeti up``/``down`` hold it for the command only and
leave ``owner: cli`` in the state, which sessions refuse to tear down.

The lock is ``flock`` on a file in ``/run`` (outside the state directory, which
``down`` removes); the kernel drops it when its holder dies, so a killed session never
blocks the next one.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from vmtestbed.ganeti.errors import LabError

LOCK_FILE = Path("/run/vmtestbed-ganeti-lab.lock")


class LabLock:
    """``with LabLock(wait=600, who="pytest"):`` -- raises LabError after ``wait`` seconds."""

    def __init__(self, wait: float = 0.0, who: str = "", path: Path = LOCK_FILE) -> None:
        self.wait = wait
        self.who = who
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise LabError(
                        f"the Ganeti lab is in use by another session ({holder or 'unknown'}); "
                        f"waited {self.wait:.0f} s. Wait for it to finish (the lab is one per "
                        "machine)") from None
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {self.who}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LabLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""``vm-testbed prebuild``: build the cached trees the slow tests need, ahead of them.

The whole test suite (``scripts/test`` with no arguments) starts this in the background
while its first tests run (those need none of these trees: the suite's order,
tests/conftest.py, puts the tests that do last). It holds :func:`running_lock` while it
runs: the tests that measure a rate, and the last ones, wait for it to end
(:func:`wait_until_done`), so no build runs beside a measurement. Each entry is built
by the same function its tests call, under the entry's build lock
(:func:`vmtestbed.paths.build_lock`): a test that reaches an entry still being built
waits for it instead of building it a second time, and one that finds it built uses it.
A build that fails here is reported and left to the test that needs it (which builds it
again and fails where the error belongs); this command's exit status is then 1.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from vmtestbed import netbox, paths, rootfs, systemd_guest, trixie

# (what, builder), in the order the suite reaches them.
STEPS: tuple[tuple[str, Callable[[], object]], ...] = (
    ("Debian 13 tree (Ganeti 3.1 lab, NetBox)", trixie.build_tree),
    ("NetBox tree (venv, migrated database)", netbox.build_netbox_root),
    ("Debian 12 minbase tree (the .deb test)",
     lambda: rootfs.build_rootfs("bookworm", (), variant="minbase")),
    ("Debian 12 systemd guest (tree, ext4 image)", systemd_guest.build_systemd_image),
)


def _entry() -> Path:
    """The prebuild as a cache entry: its build lock is held for as long as it runs."""
    return paths.cache_dir() / "prebuild"


def running_lock() -> Path:
    return paths.lock_file(_entry())


def wait_until_done(timeout: float) -> tuple[bool, float]:
    """Wait (at most ``timeout`` s) while a prebuild runs. Returns whether none runs now,
    and the seconds waited. A build beside a test would skew what a rate or latency test
    measures."""
    lock = running_lock()
    if not lock.exists():
        return True, 0.0
    started = time.monotonic()
    fd = os.open(lock, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True, time.monotonic() - started
            except BlockingIOError:
                if time.monotonic() - started > timeout:
                    return False, time.monotonic() - started
                time.sleep(0.5)
    finally:
        os.close(fd)


def run(steps: tuple[tuple[str, Callable[[], object]], ...] = STEPS,
        say: Callable[[str], None] = print) -> int:
    with paths.build_lock(_entry()):
        return _run_steps(steps, say)


def _run_steps(steps: tuple[tuple[str, Callable[[], object]], ...],
               say: Callable[[str], None]) -> int:
    failed = 0
    started = time.monotonic()
    for what, build in steps:
        t0 = time.monotonic()
        try:
            build()
        except Exception as exc:  # reported; the test that needs it builds it again
            failed += 1
            say(f"prebuild: {what}: FAILED after {time.monotonic() - t0:.1f} s: "
                f"{type(exc).__name__}: {exc}")
            say(traceback.format_exc(limit=3).rstrip())
            continue
        say(f"prebuild: {what}: {time.monotonic() - t0:.1f} s")
    say(f"prebuild: done in {time.monotonic() - started:.1f} s, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(say=lambda line: print(line, flush=True)))

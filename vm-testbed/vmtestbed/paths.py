"""Where the testbed keeps its build cache and state."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Build cache: ``$VMTESTBED_CACHE``, else ``vm-testbed/.cache`` (gitignored)."""
    env = os.environ.get("VMTESTBED_CACHE")
    return Path(env) if env else TESTBED_DIR / ".cache"


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Held while ``out`` (a cache entry) is built: a second builder of the same entry (the
    background prebuild and a test's fixture, say) waits here, then finds it built,
    instead of building it again beside the first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file(out), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def lock_file(out: Path) -> Path:
    """The file :func:`build_lock` locks for ``out``."""
    return out.parent / f".lock-{out.name}"

"""Read and set the CPU affinity of single threads.

Reading parses ``Cpus_allowed_list`` from ``<proc>/<pid>/task/<tid>/status`` so tests
can use a synthetic /proc tree; setting uses ``os.sched_setaffinity(tid, ...)``,
which on Linux acts on exactly that thread (sched_setaffinity(2): "pid" is a thread
id). psutil is not used: ``Process.cpu_affinity`` is the same syscall for a pid
(it would need a Process per thread id) and costs ~20 ms to import on the hot path.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from hookpack.actions.pinning.topology import parse_cpulist


def read_affinity(proc_root: Path, pid: int, tid: int) -> frozenset[int] | None:
    """The thread's allowed CPUs, or None when the thread is gone."""
    try:
        text = (proc_root / str(pid) / "task" / str(tid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpulist(line.split(":", 1)[1])
    return None


def set_affinity(tid: int, cpus: Iterable[int]) -> str | None:
    """Set one thread's affinity. Returns None when done, else why it was not.

    A thread that exited meanwhile (ESRCH) and a kernel thread attached to the
    process that refuses new affinities (EINVAL, e.g. KVM's ``kvm-nx-lpage-recovery``
    worker, PF_NO_SETAFFINITY) are reported, not raised.
    """
    try:
        os.sched_setaffinity(tid, set(cpus))
    except ProcessLookupError:
        return "gone"
    except OSError as err:
        if err.errno == errno.EINVAL:
            return "refused (EINVAL)"
        raise
    return None

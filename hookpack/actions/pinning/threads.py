"""Running QEMU processes of a Ganeti KVM node and their threads.

vCPU threads of the instance being pinned come from QMP ``query-cpus-fast``
(``thread-id`` per ``cpu-index``). For the *other* instances of the node we do not
talk QMP: their sockets may be busy (Ganeti, kvmd, another hook) and a node-wide
lock must not wait on them. Their vCPU threads are recognised from /proc alone:

- QEMU names its threads (``CPU 0/KVM``, ``CPU 1/TCG``, ``call_rcu``, ...) only with
  ``-name ...,debug-threads=on``; checked on QEMU 7.2 (Debian 12) under KVM and TCG.
  Ganeti 3.0 does not pass debug-threads, so on a Ganeti node every thread is named
  ``qemu-system-x86``. When names are there, they are used.
- Otherwise a vCPU pinned 1:1 is a thread whose affinity is exactly one CPU that no
  other thread of the same QEMU has as its single CPU. Emulator and I/O threads of
  a pinned instance share one set (main loop, call_rcu, workers: always more than
  one thread), so even when that set is a single CPU it is not taken for a vCPU.

So the node's allocation is read back from live affinities; nothing is saved.

Threads the kernel does not let anyone move (``PF_NO_SETAFFINITY`` in the flags of
``task/<tid>/stat``, e.g. KVM's ``kvm-nx-lpage-recovery`` worker on kernels where it is
a task of the QEMU process) are left out: no plan can place them.

vhost-net workers belong to the instance too: before Linux 6.4 they are kernel threads
named ``vhost-<qemu pid>`` (children of kthreadd, not in the QEMU's task list); from 6.4
they are threads of the QEMU process with that name (vhost_task). Both kinds go with
the emulator threads.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hookpack.actions.pinning.affinity import read_affinity
from hookpack.errors import HookpackError
from hookpack.record import record
from hookpack.validate import instance_name

_VCPU_NAME = re.compile(r"^CPU (\d+)/(KVM|TCG|HVF|WHPX)$")
_VHOST_NAME = re.compile(r"^vhost-(\d+)$")
PF_NO_SETAFFINITY = 0x04000000  # include/linux/sched.h


@record(frozen=True)
class Process:
    name: str
    pid: int
    vcpus: int | None  # from -smp on its command line
    cmdline: tuple[str, ...]


def running_instances(kvm_dir: Path, proc_root: Path) -> dict[str, Process]:
    """Instances with a live QEMU: ``<kvm_dir>/pid/<inst>`` naming a process whose
    command line has ``-name <inst>`` (what Ganeti's _InstancePidAlive checks)."""
    found: dict[str, Process] = {}
    pid_dir = kvm_dir / "pid"
    try:
        entries = sorted(pid_dir.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            name = instance_name(entry.name)
            pid = int(entry.read_text().strip())
        except (HookpackError, ValueError, OSError):
            continue
        proc = read_process(proc_root, name, pid)
        if proc is not None:
            found[name] = proc
    return found


def read_process(proc_root: Path, name: str, pid: int) -> Process | None:
    try:
        raw = (proc_root / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    argv = tuple(raw.decode(errors="replace").split("\0"))
    names = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-name"]
    if not any(n.split(",", 1)[0] == name for n in names):
        return None  # pid reused by another process
    return Process(name, pid, smp_vcpus(argv), argv)


def smp_vcpus(argv: tuple[str, ...]) -> int | None:
    """vCPU count of ``-smp N`` / ``-smp cpus=N,...`` / ``-smp N,sockets=...``."""
    for i, arg in enumerate(argv[:-1]):
        if arg != "-smp":
            continue
        for part in argv[i + 1].split(","):
            key, _, value = part.rpartition("=")
            if key in ("", "cpus") and value.isdigit():
                return int(value)
        return None
    return 1 if argv else None  # QEMU's default


def task_ids(proc_root: Path, pid: int) -> list[int]:
    try:
        return sorted(int(t.name) for t in (proc_root / str(pid) / "task").iterdir()
                      if t.name.isdigit())
    except (FileNotFoundError, ProcessLookupError):
        return []


def unmovable(proc_root: Path, pid: int, tid: int) -> bool:
    """The kernel refuses new affinities for this thread (PF_NO_SETAFFINITY)."""
    try:
        stat = (proc_root / str(pid) / "task" / str(tid) / "stat").read_text()
    except (OSError, ProcessLookupError):
        return False
    fields = stat.rpartition(")")[2].split()
    try:
        return bool(int(fields[6]) & PF_NO_SETAFFINITY)
    except (IndexError, ValueError):
        return False


def vhost_kthreads(proc_root: Path) -> dict[int, list[int]]:
    """QEMU pid -> its vhost-net worker kernel threads (``vhost-<pid>``, Linux < 6.4).

    Kernel threads are children of kthreadd (pid 2): only those are looked at when
    ``<proc>/2/task/2/children`` is there (CONFIG_PROC_CHILDREN), else every process.
    """
    found: dict[int, list[int]] = {}
    try:
        children = (proc_root / "2" / "task" / "2" / "children").read_text().split()
        entries = [proc_root / c for c in children]
    except OSError:
        try:
            entries = list(proc_root.iterdir())
        except OSError:
            return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except (OSError, ProcessLookupError):
            continue
        match = _VHOST_NAME.match(comm)
        if match and (entry / "task" / entry.name).is_dir() and not _is_thread_of(
                proc_root, int(match.group(1)), int(entry.name)):
            found.setdefault(int(match.group(1)), []).append(int(entry.name))
    return {pid: sorted(tids) for pid, tids in found.items()}


def _is_thread_of(proc_root: Path, pid: int, tid: int) -> bool:
    return (proc_root / str(pid) / "task" / str(tid)).is_dir()


def thread_name(proc_root: Path, pid: int, tid: int) -> str:
    try:
        return (proc_root / str(pid) / "task" / str(tid) / "comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


@record(frozen=True)
class Observed:
    """One QEMU's threads and affinities as /proc shows them."""

    process: Process
    affinities: dict[int, frozenset[int]]  # tid -> allowed CPUs
    vcpu_tids: tuple[int, ...]  # by vCPU index when known (names/QMP), else by tid
    dedicated: tuple[int, ...]  # single CPUs of those vCPU threads (1:1 pinned ones)
    named: bool  # vCPU threads recognised by their names
    held: int | None = None  # the one CPU a whole 1-vCPU QEMU sits on (not dedicated)
    kthreads: tuple[int, ...] = ()  # its vhost-net kernel threads (also in affinities)
    vhost: tuple[int, ...] = ()  # its vhost threads, kernel or its own (vhost-<pid>)
    unmovable: tuple[int, ...] = ()  # threads the kernel keeps where they are

    @property
    def vcpus(self) -> int:
        return self.process.vcpus or len(self.vcpu_tids)


def observe_process(proc_root: Path, process: Process,
                    vcpu_tids: list[int] | None = None,
                    kthreads: list[int] | None = None) -> Observed:
    """Threads and affinities; vCPU threads from ``vcpu_tids`` (QMP) if given;
    ``kthreads``: its vhost kernel threads (:func:`vhost_kthreads`)."""
    affinities: dict[int, frozenset[int]] = {}
    names: dict[int, int] = {}
    fixed: list[int] = []
    vhost: list[int] = []
    for tid in task_ids(proc_root, process.pid):
        if unmovable(proc_root, process.pid, tid):
            fixed.append(tid)
            continue
        cpus = read_affinity(proc_root, process.pid, tid)
        if cpus is None:
            continue
        affinities[tid] = cpus
        comm = thread_name(proc_root, process.pid, tid)
        if _VHOST_NAME.match(comm):
            vhost.append(tid)
        if vcpu_tids is None:
            match = _VCPU_NAME.match(comm)
            if match:
                names[int(match.group(1))] = tid
    named = bool(names)
    if vcpu_tids is not None:
        tids = tuple(t for t in vcpu_tids if t in affinities)
    elif named:
        tids = tuple(names[i] for i in sorted(names) if names[i] in affinities)
    else:
        singles = Counter(next(iter(c)) for c in affinities.values() if len(c) == 1)
        tids = tuple(t for t, c in affinities.items()
                     if len(c) == 1 and singles[next(iter(c))] == 1)
        if process.vcpus is not None and len(tids) > process.vcpus:
            tids = ()  # more lone single-CPU threads than vCPUs: not our pinning
    dedicated = tuple(next(iter(affinities[t])) for t in tids if len(affinities[t]) == 1)
    held = None
    if not dedicated and vcpu_tids is None and process.vcpus == 1 and _one_cpu(affinities):
        # A 1-vCPU instance with every thread on one CPU: pinned 1:1 with its emulator
        # threads on its own CPU (nothing else was left), or floating on a one-CPU
        # pool; /proc cannot tell which. It "holds" that CPU: no other vCPU goes
        # there, emulator threads may.
        held = next(iter(next(iter(affinities.values()))))
    workers = []
    for ktid in kthreads or ():
        cpus = read_affinity(proc_root, ktid, ktid)
        if cpus is not None:
            affinities[ktid] = cpus
            workers.append(ktid)
    return Observed(process, affinities, tids, dedicated, named, held, tuple(workers),
                    tuple(vhost + workers), tuple(fixed))


def _one_cpu(affinities: dict[int, frozenset[int]]) -> bool:
    sets = set(affinities.values())
    return len(sets) == 1 and len(next(iter(sets))) == 1


def qmp_vcpu_tids(qmp_path: Path, timeout: float) -> list[int]:
    """Thread ids of the vCPUs by ``cpu-index`` (QMP ``query-cpus-fast``)."""
    from hookpack.adapters.qmp import session

    with session(qmp_path, timeout) as qmp:
        cpus = qmp.execute("query-cpus-fast")
    return [int(c["thread-id"]) for c in sorted(cpus, key=lambda c: c["cpu-index"])]

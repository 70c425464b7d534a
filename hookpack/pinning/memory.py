"""Where a QEMU process's memory is, per NUMA node, and moving it to one node.

Reading: ``<proc>/<pid>/numa_maps`` lists every mapping with ``N<node>=<pages>`` and
``kernelpagesize_kB=<k>`` (proc(5), Documentation/filesystems/proc.rst); the sum over
mappings is the process's resident memory per node (what ``numastat -p`` prints).

Moving: ``move_pages(2)`` on the process, mapping by mapping, in batches, with
``MPOL_MF_MOVE_ALL`` (needs CAP_SYS_NICE; pages also mapped by other processes move
too, as with ``migratepages``/``migrate_pages(2)`` run as root and libvirt's
``cpuset.mems``). Batches keep the run time bounded: when the deadline comes first,
what is left is reported and the next run continues (the move is a reconcile: only
mappings with pages off the target node are touched). ``migrate_pages(2)`` would be
one call for the whole process, but one call cannot be bounded: a 64 GiB guest takes
tens of seconds (bench/numa_move.py measures both).

Future allocations are not bound here: the kernel has no call that sets another
process's memory policy (set_mempolicy(2)/mbind(2) act on the caller). They follow
the default local policy: every thread of the instance runs on the node's CPUs, so
new pages come from that node while it has free memory, and from the nearest other
node when it has none (``preferred``, not ``strict``: an instance is never OOM-killed
because its node is full). See docs/actions/pinning.md.

Hugepages: hugetlbfs pages (Ganeti ``mem_path``) move only into free huge pages of the
same size in the target node's pool (``node<N>/hugepages/hugepages-<k>kB/free_hugepages``);
without them they stay where they are, and the result says so. Transparent huge pages
move whole.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SYS_MOVE_PAGES = 279  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
MPOL_MF_MOVE_ALL = 1 << 2
LOCAL_MIN = 0.95  # share of resident memory that must end on the target node
BATCH_BYTES = 64 << 20  # one move_pages call covers at most this much address space
_NODE_FIELD = re.compile(r"^N(\d+)=(\d+)$")


@dataclass(frozen=True)
class Vma:
    start: int
    end: int
    page_kib: int  # kernelpagesize_kB
    pages: dict[int, int]  # node -> resident pages of page_kib
    huge: bool  # hugetlbfs

    def bytes_on(self, node: int) -> int:
        return self.pages.get(node, 0) * self.page_kib * 1024

    def bytes_off(self, node: int) -> int:
        return sum(n * self.page_kib * 1024 for nid, n in self.pages.items() if nid != node)


def read_maps(proc_root: Path, pid: int) -> list[Vma]:
    """Every mapping with resident pages; [] when the process is gone."""
    try:
        numa = (proc_root / str(pid) / "numa_maps").read_text()
        maps = (proc_root / str(pid) / "maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    ends: dict[int, int] = {}
    for line in maps.splitlines():
        span = line.split(" ", 1)[0]
        low, _, high = span.partition("-")
        try:
            ends[int(low, 16)] = int(high, 16)
        except ValueError:
            continue
    found = []
    for line in numa.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            start = int(fields[0], 16)
        except ValueError:
            continue
        pages: dict[int, int] = {}
        page_kib = 4
        for f in fields[2:]:
            match = _NODE_FIELD.match(f)
            if match:
                pages[int(match.group(1))] = int(match.group(2))
            elif f.startswith("kernelpagesize_kB="):
                page_kib = int(f.split("=", 1)[1])
        if pages and start in ends:
            found.append(Vma(start, ends[start], page_kib, pages, "huge" in fields[2:]))
    return found


def per_node(maps: list[Vma]) -> dict[int, int]:
    """Resident bytes per NUMA node."""
    total: dict[int, int] = {}
    for m in maps:
        for node, pages in m.pages.items():
            total[node] = total.get(node, 0) + pages * m.page_kib * 1024
    return dict(sorted(total.items()))


def node_usage(proc_root: Path, pid: int) -> dict[int, int]:
    return per_node(read_maps(proc_root, pid))


def share_on(usage: dict[int, int], node: int) -> float:
    total = sum(usage.values())
    return usage.get(node, 0) / total if total else 1.0


@dataclass
class MoveResult:
    node: int
    before: dict[int, int]  # bytes per node
    after: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    calls: int = 0
    cut_short: bool = False  # the deadline came first
    error: str | None = None  # move_pages failed as a whole (not per page)
    why: str = ""  # why memory stayed elsewhere (hugetlbfs pool), when it did

    @property
    def moved(self) -> int:
        return max(0, self.after.get(self.node, 0) - self.before.get(self.node, 0))

    @property
    def left(self) -> int:
        return sum(b for n, b in self.after.items() if n != self.node)

    @property
    def share(self) -> float:
        return share_on(self.after, self.node)


class _Syscall:
    """move_pages(2) through libc's syscall(2): glibc has no wrapper (libnuma does)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fn = libc.syscall
        self.fn.restype = ctypes.c_long
        self.fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]

    def move(self, pid: int, addrs: array.array[int], nodes: array.array[int],
             status: array.array[int]) -> int:
        rc = self.fn(SYS_MOVE_PAGES, pid, len(addrs), addrs.buffer_info()[0],
                     nodes.buffer_info()[0], status.buffer_info()[0], MPOL_MF_MOVE_ALL)
        return 0 if rc >= 0 else ctypes.get_errno()


def move_to_node(proc_root: Path, pid: int, node: int,
                 remaining: Callable[[], float] = lambda: 3600.0,
                 sysfs_root: Path = Path("/sys")) -> MoveResult:
    """Move every resident page of ``pid`` that is not on ``node`` there.

    Stops between batches when ``remaining()`` drops to 0 (``cut_short``). Pages the
    kernel cannot move (no free huge page on the node, pinned for DMA, ...) stay and show
    in ``after``. Per-page failures are not errors; a failing call (ESRCH, EPERM) is.
    """
    maps = read_maps(proc_root, pid)
    result = MoveResult(node, per_node(maps))
    todo = [m for m in maps if m.bytes_off(node)]
    if not todo:
        result.after = result.before
        return result
    sys = _Syscall()
    start = time.monotonic()
    for m in todo:
        step = m.page_kib * 1024
        per_call = max(1, BATCH_BYTES // step)
        addr = m.start
        while addr < m.end:
            if remaining() <= 0:
                result.cut_short = True
                break
            stop = min(m.end, addr + per_call * step)
            addrs = array.array("Q", range(addr, stop, step))
            nodes = array.array("i", [node]) * len(addrs)
            status = array.array("i", bytes(4 * len(addrs)))
            err = sys.move(pid, addrs, nodes, status)
            result.calls += 1
            if err == errno.ESRCH:
                result.error = "the process exited"
                break
            if err not in (0, errno.ENOENT, errno.EFAULT, errno.ENOMEM, errno.EBUSY):
                result.error = f"move_pages: {os.strerror(err)}"
                break
            addr = stop
        if result.cut_short or result.error:
            break
    result.seconds = time.monotonic() - start
    result.after = node_usage(proc_root, pid) or result.before
    if result.share < LOCAL_MIN:
        result.why = why_left(proc_root, sysfs_root, pid, node)
    return result


def free_huge_pages(sysfs_root: Path, node: int, page_kib: int) -> int | None:
    path = (sysfs_root / "devices" / "system" / "node" / f"node{node}" / "hugepages"
            / f"hugepages-{page_kib}kB" / "free_hugepages")
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def why_left(proc_root: Path, sysfs_root: Path, pid: int, node: int) -> str:
    """Why memory stayed off ``node`` after a move: hugetlbfs pages without room there."""
    huge = [m for m in read_maps(proc_root, pid) if m.huge and m.bytes_off(node)]
    if not huge:
        return ""
    sizes = sorted({m.page_kib for m in huge})
    parts = []
    for kib in sizes:
        left = sum(m.bytes_off(node) for m in huge if m.page_kib == kib) >> 20
        free = free_huge_pages(sysfs_root, node, kib)
        parts.append(f"{left} MiB of {kib} kB hugetlbfs pages, {free} free {kib} kB pages on "
                     f"node {node}")
    return "; ".join(parts) + (": add huge pages on that node "
                               f"(node{node}/hugepages/.../nr_hugepages) and apply again")


def mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB"


def describe_usage(usage: dict[int, int]) -> str:
    total = sum(usage.values())
    if not total:
        return "no resident memory"
    return ", ".join(f"node {n} {mib(b)} ({100 * b / total:.0f}%)" for n, b in usage.items())

"""Where a QEMU process's memory is, per NUMA node, and moving it to one node.

Reading: ``<proc>/<pid>/numa_maps`` lists every mapping with ``N<node>=<pages>`` and
``kernelpagesize_kB=<k>`` (proc(5), Documentation/filesystems/proc.rst). The instance's
memory is its anonymous and shared mappings (guest RAM: anonymous, memfd, hugetlbfs;
heap, stacks); private file mappings (the QEMU binary and its libraries, page cache
shared with every process that runs them) are counted apart as ``images``.

Moving: ``migrate_pages(2)`` for the whole process, from every other node to the
target node, with MPOL_MF_MOVE_ALL semantics (as root: pages also mapped by other
processes move too, as with numactl's ``migratepages`` and libvirt's ``cpuset.mems``).
One call moves everything and cannot be interrupted, so it runs in a helper process
(``python -m hookpack.actions.pinning.memory``, in its own session): the hook waits for it until
its deadline and then returns, while the helper finishes the move in the background (the
next run finds the memory in place). ``move_pages(2)`` in batches would be
interruptible, but on the Debian 6.1 test kernel it reported every page of QEMU's RAM
as absent (ENOENT, or EFAULT with THP) while numa_maps showed them resident: not used.

Future allocations are not bound here: the kernel has no call that sets another
process's memory policy (set_mempolicy(2)/mbind(2) act on the caller). They follow
the default local policy: every thread of the instance runs on the node's CPUs, so
new pages come from that node while it has free memory, and from the nearest other
node when it has none (``preferred``, not ``strict``: an instance is never OOM-killed
because its node is full). See docs/actions/pinning.md.

Hugepages: hugetlbfs pages (Ganeti ``mem_path``) move into free huge pages of the same
size on the target node (``node<N>/hugepages/hugepages-<k>kB/free_hugepages``); when
there are none, the kernel allocates fresh 2 MiB pages there for the move (Linux >= 4.16,
alloc_migrate_hugetlb_folio; the pool moves with them), but never 1 GiB ones: those
stay unless the node's pool has free 1 GiB pages, and the result says so (also 2 MiB
pages when the node has no free 2 MiB block). Transparent huge pages move whole, or
split.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from hookpack.record import field, record

SYS_MIGRATE_PAGES = 256  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
HELPER_FAILED = 250
MOVE_PASSES = 3  # a guest that allocates while it is moved gets a second (third) pass
LOCAL_MIN = 0.95  # share of the instance's memory that must end on the target node
_NODE_FIELD = re.compile(r"^N(\d+)=(\d+)$")


@record(frozen=True)
class Vma:
    start: int
    end: int
    page_kib: int  # kernelpagesize_kB
    pages: dict[int, int]  # node -> resident pages of page_kib
    huge: bool  # hugetlbfs
    image: bool = False  # a private file mapping: program or library image

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
    ends: dict[int, tuple[int, bool]] = {}
    for line in maps.splitlines():
        parts = line.split()
        low, _, high = parts[0].partition("-") if parts else ("", "", "")
        image = len(parts) >= 6 and parts[1][3:4] == "p" and parts[5].startswith("/")
        try:
            ends[int(low, 16)] = (int(high, 16), image)
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
            stop, image = ends[start]
            huge = "huge" in fields[2:]
            found.append(Vma(start, stop, page_kib, pages, huge, image and not huge))
    return found


def per_node(maps: list[Vma], images: bool = False) -> dict[int, int]:
    """Resident bytes per NUMA node of the instance's own memory (``images``: of the
    program and library images instead)."""
    total: dict[int, int] = {}
    for m in maps:
        if m.image != images:
            continue
        for node, pages in m.pages.items():
            total[node] = total.get(node, 0) + pages * m.page_kib * 1024
    return dict(sorted(total.items()))


def node_usage(proc_root: Path, pid: int) -> dict[int, int]:
    """Resident bytes per NUMA node of the process's own memory (no images)."""
    return per_node(read_maps(proc_root, pid))


def share_on(usage: dict[int, int], node: int) -> float:
    total = sum(usage.values())
    return usage.get(node, 0) / total if total else 1.0


@record
class MoveResult:
    node: int
    before: dict[int, int]  # bytes per node (the instance's own memory)
    after: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    background: int | None = None  # pid of the child still moving at the deadline
    error: str | None = None  # migrate_pages failed as a whole (not per page)
    why: str = ""  # why memory stayed elsewhere (hugetlbfs pool), when it did

    @property
    def cut_short(self) -> bool:
        return self.background is not None

    @property
    def moved(self) -> int:
        """Bytes that left the other nodes."""
        off = sum(b for n, b in self.before.items() if n != self.node)
        return max(0, off - self.left)

    @property
    def left(self) -> int:
        return sum(b for n, b in self.after.items() if n != self.node)

    @property
    def share(self) -> float:
        return share_on(self.after, self.node)


def migrate_pages(pid: int, from_nodes: Iterable[int], to_node: int) -> int:
    """migrate_pages(2) through libc's syscall(2) (glibc has no wrapper; libnuma does).
    Returns the number of pages it could not move; raises OSError."""
    import ctypes

    nodes = sorted(set(from_nodes) | {to_node})
    words = nodes[-1] // 64 + 1
    old = (ctypes.c_ulong * words)()
    new = (ctypes.c_ulong * words)()
    for n in from_nodes:
        old[n // 64] |= 1 << (n % 64)
    new[to_node // 64] |= 1 << (to_node % 64)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(ctypes.c_long(SYS_MIGRATE_PAGES), ctypes.c_long(pid),
                      ctypes.c_ulong(words * 64 + 1), old, new)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def move_to_node(proc_root: Path, pid: int, node: int,
                 remaining: Callable[[], float] = lambda: 3600.0,
                 sysfs_root: Path = Path("/sys")) -> MoveResult:
    """Move every resident page of ``pid`` that is not on ``node`` there.

    Waits for the move while ``remaining()`` is above 0; past that the child goes on
    alone (``background``). Pages the kernel cannot move (no free huge page on the
    node, pinned for DMA, ...) stay and show in ``after``.
    """
    maps = read_maps(proc_root, pid)
    result = MoveResult(node, per_node(maps))
    left = _bytes_off(maps, node)
    if not left:
        result.after = result.before
        return result
    start = time.monotonic()
    for _ in range(MOVE_PASSES):
        off = sorted({n for m in maps for n, c in m.pages.items() if c and n != node})
        helper = _start_move(pid, node, off)
        code = _wait(helper, remaining)
        if code is None:
            result.background = helper.pid
            break
        if code:
            result.error = _move_error(code)
            break
        # A running guest still allocates (on the nodes its threads ran on until they
        # were pinned): what it added during a pass is moved by the next one.
        maps = read_maps(proc_root, pid)
        now_left = _bytes_off(maps, node)
        if not now_left or now_left == left or remaining() <= 0:
            break  # all there, the kernel moves no more, or no time for another pass
        left = now_left
    result.seconds = time.monotonic() - start
    result.after = node_usage(proc_root, pid) or result.before
    if not result.cut_short and result.share < LOCAL_MIN:
        result.why = why_left(proc_root, sysfs_root, pid, node)
    return result


def _bytes_off(maps: list[Vma], node: int) -> int:
    """The instance's own memory (not shared images) on other nodes than ``node``."""
    return sum(m.bytes_off(node) for m in maps if not m.image)


def _start_move(pid: int, node: int, off: list[int]) -> subprocess.Popen[bytes]:
    """One migrate_pages(2) in a helper process: not a fork of this (threaded) one, and
    in its own session, so nothing that ends the hook's process group cuts a move short."""
    return subprocess.Popen(
        [sys.executable, "-m", "hookpack.actions.pinning.memory", str(pid), str(node),
         *map(str, off)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)


def _move_error(code: int) -> str:
    if code == errno.ESRCH:
        return "the process exited"
    if code < HELPER_FAILED:
        return f"migrate_pages: {os.strerror(code)}"
    return f"migrate_pages: the helper process failed (exit status {code})"


def _wait(helper: subprocess.Popen[bytes], remaining: Callable[[], float]) -> int | None:
    """The helper's exit status, or None when ``remaining()`` ran out first."""
    try:
        return helper.wait(max(0.0, remaining()))
    except subprocess.TimeoutExpired:
        return None


def _main(argv: list[str]) -> int:
    """``python -m hookpack.actions.pinning.memory PID TO FROM...``: one migrate_pages(2) call.
    Exit status: 0 done, the errno when the call failed, HELPER_FAILED otherwise."""
    try:
        pid, to_node, *from_nodes = (int(a) for a in argv)
        migrate_pages(pid, from_nodes, to_node)
    except OSError as err:
        return min(err.errno or HELPER_FAILED, HELPER_FAILED)
    except (ValueError, TypeError):
        return HELPER_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


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
    return "; ".join(parts) + (": add free huge pages on that node "
                               f"(node{node}/hugepages/.../nr_hugepages) and apply again")


def mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB"


def describe_usage(usage: dict[int, int]) -> str:
    total = sum(usage.values())
    if not total:
        return "no resident memory"
    return ", ".join(f"node {n} {mib(b)} ({100 * b / total:.0f}%)" for n, b in usage.items())

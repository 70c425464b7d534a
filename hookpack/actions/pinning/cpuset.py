"""The cgroup cpuset a QEMU process runs in: the CPUs and memory nodes it may use.

``sched_setaffinity(2)`` silently narrows a mask to the caller's cpuset (and fails with
EINVAL when nothing is left), so the planner must only hand out CPUs of the process's
cpuset. Read from ``<proc>/<pid>/cgroup`` and the cgroup mounts of
``<proc>/<pid>/mountinfo``:

- cgroup v2 (``0::/path``): ``<mnt>/<path>/cpuset.cpus.effective``; where the cpuset
  controller is not enabled for that cgroup the nearest ancestor's file counts;
- cgroup v1 (``N:cpuset:/path``, e.g. Debian 12 hybrid hosts):
  ``<mnt>/<path>/cpuset.effective_cpus``.

Memory nodes come from ``Mems_allowed_list`` in ``<proc>/<pid>/status`` (the task's
cpuset mems, either version). Nothing found (no cgroup files, synthetic trees): no
restriction (None).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from hookpack.actions.pinning.topology import parse_cpulist
from hookpack.errors import BadInput
from hookpack.record import record


@record(frozen=True)
class Cpuset:
    cpus: frozenset[int] | None  # None: not known, no restriction
    mems: frozenset[int] | None
    where: str = ""  # the cgroup file the CPUs came from (for messages)


def process_cpuset(proc_root: Path, sysfs_root: Path, pid: int) -> Cpuset:
    mounts = _cgroup_mounts(proc_root, sysfs_root, pid)
    cpus, where = _cpus(proc_root, pid, mounts)
    return Cpuset(cpus, _mems(proc_root, pid), where)


def _read(path: Path) -> frozenset[int] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        return parse_cpulist(text)
    except BadInput:
        return None


def _mems(proc_root: Path, pid: int) -> frozenset[int] | None:
    try:
        text = (proc_root / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Mems_allowed_list:"):
            try:
                return parse_cpulist(line.split(":", 1)[1]) or None
            except BadInput:
                return None
    return None


def _cgroup_mounts(proc_root: Path, sysfs_root: Path, pid: int) -> dict[str, Path]:
    """``"v2"`` and ``"cpuset"`` (v1) -> mount point (``/sys`` mapped to sysfs_root)."""
    try:
        text = (proc_root / str(pid) / "mountinfo").read_text()
    except OSError:
        return {}
    found: dict[str, Path] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        point = fields[4]
        if point == "/sys" or point.startswith("/sys/"):
            mnt = sysfs_root / PurePosixPath(point).relative_to("/sys")
        else:
            mnt = Path(point)
        if after[0] == "cgroup2":
            found.setdefault("v2", mnt)
        elif after[0] == "cgroup" and "cpuset" in after[2].split(","):
            found.setdefault("cpuset", mnt)
    return found


def _cpus(proc_root: Path, pid: int, mounts: dict[str, Path]
          ) -> tuple[frozenset[int] | None, str]:
    try:
        lines = (proc_root / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None, ""
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip().lstrip("/")
        if hid != "0" and "cpuset" in controllers.split(",") and "cpuset" in mounts:
            where = mounts["cpuset"] / rel / "cpuset.effective_cpus"
            cpus = _read(where)
            if cpus:
                return cpus, str(where)
    for line in lines:
        if line.startswith("0::") and "v2" in mounts:
            cg = PurePosixPath(line[3:].strip().lstrip("/") or ".")
            for parent in [cg, *cg.parents]:
                where = mounts["v2"] / parent / "cpuset.cpus.effective"
                cpus = _read(where)
                if cpus:
                    return cpus, str(where)
    return None, ""

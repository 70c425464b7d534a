"""What a KVM node shows about an instance: its QEMU process, its disks, their storage.

Paths follow Ganeti's KVM hypervisor (shared/reference/ganeti-hooks.md): ``pid/<inst>``,
``ctrl/<inst>.qmp``, ``conf/<inst>.runtime`` under the kvm dir, and
``instance-disks/<inst>:<idx>`` links to the storage QEMU opened.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hookpack.action import Paths
from hookpack.env import qemu_disk_id
from hookpack.errors import ActionError, BadInput
from hookpack.record import record
from hookpack.validate import instance_name


@record(frozen=True)
class Storage:
    path: Path  # where the instance-disks link points
    size: int  # bytes
    is_file: bool  # a regular file: block_resize truncates it


@record(frozen=True)
class RuntimeDisk:
    """One disk of the runtime file: index, QEMU id (``hvinfo.id``) and link."""

    index: int
    qemu_id: str | None
    link: str | None
    dev_type: str


def qemu_pid(paths: Paths, name: str) -> int | None:
    """QEMU's pid when the instance's QEMU runs on this node, else None.

    Like Ganeti's ``_InstancePidAlive``: the pid file, a live process, and (when
    readable) a command line with ``-name <instance>`` so a reused pid does not count.
    """
    try:
        pid = int((paths.kvm_dir / "pid" / name).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    proc = paths.proc_root / str(pid)
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    except OSError:
        return pid if proc.exists() else None
    if not argv or argv == [b""]:
        return None  # a zombie: QEMU has exited
    # `-name <inst>`, possibly with suboptions (`-name <inst>,debug-threads=on`).
    values = {b.split(b",", 1)[0] for a, b in itertools.pairwise(argv) if a == b"-name"}
    return pid if name.encode() in values else None


def qmp_socket(paths: Paths, name: str) -> Path:
    return paths.kvm_dir / "ctrl" / f"{name}.qmp"


def disk_link(paths: Paths, name: str, index: int) -> Path:
    return paths.instance_disks_dir / f"{name}:{index}"


def storage_link(paths: Paths, name: str, pid: int, index: int, qemu_id: str | None,
                 opened: str) -> Path:
    """Where one disk's storage is, found by the disk's identity: the path QEMU opened
    for it (``query-block``'s ``file``) or the link the runtime file gives for its QEMU
    id, the first of these that QEMU holds open (its ``/proc/<pid>/fd``). The index link
    ``instance-disks/<inst>:<index>`` only when nothing names the disk: after a hot-remove
    Ganeti renumbers the disks while the links keep their names, so ``<inst>:<index>``
    can be another disk's (one QEMU holds open too)."""
    candidates = [Path(opened)] if opened.startswith("/") else []
    if qemu_id:
        try:
            disks = runtime_disks(paths, name)
        except ActionError:
            disks = []
        candidates += [Path(d.link) for d in disks if d.qemu_id == qemu_id and d.link]
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        return disk_link(paths, name, index)
    held = open_files(paths, pid)
    for path in candidates:
        key = _file_key(path)
        if key is not None and (held is None or key in held):
            return path
    if held is None or not any(_file_key(c) for c in candidates):
        return candidates[0]  # read_storage names what is missing
    shown = ", ".join(str(c) for c in candidates)
    raise ActionError(f"none of {shown} is open in QEMU (pid {pid}): cannot tell which "
                      "storage is this disk's")


def open_files(paths: Paths, pid: int) -> set[tuple[int, ...]] | None:
    """What a process holds open (block devices by device number, files by inode);
    None when its fd directory cannot be read."""
    fd_dir = paths.proc_root / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    held = set()
    for fd in names:
        key = _file_key(fd_dir / fd)
        if key is not None:
            held.add(key)
    return held


def _file_key(path: Path) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(info.st_mode):
        return (0, info.st_rdev)
    if stat.S_ISREG(info.st_mode):
        return (1, info.st_dev, info.st_ino)
    return None


def read_storage(link: Path, sysfs_root: Path) -> Storage:
    """The size of what ``link`` points at: a regular file's length, or a block
    device's size (seek to its end; ``/sys/dev/block/M:m/size`` if it cannot be opened)."""
    try:
        info = os.stat(link)
        target = Path(os.path.realpath(link))
    except FileNotFoundError:
        raise ActionError(f"{link}: missing (no storage link for this disk on this node)"
                          ) from None
    except OSError as err:
        raise ActionError(f"{link}: cannot stat it: {err.strerror}") from None
    if stat.S_ISREG(info.st_mode):
        return Storage(target, info.st_size, True)
    if not stat.S_ISBLK(info.st_mode):
        raise ActionError(f"{link}: points at {target}, neither a file nor a block device")
    try:
        fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError:
        sys_size = sysfs_root / "dev/block" / (f"{os.major(info.st_rdev)}:"
                                              f"{os.minor(info.st_rdev)}") / "size"
        try:
            size = int(sys_size.read_text()) * 512
        except (OSError, ValueError) as err:
            raise ActionError(f"{link}: cannot read the size of {target}: {err}") from None
    return Storage(target, size, False)


def runtime_disks(paths: Paths, name: str) -> list[RuntimeDisk]:
    """The disks of ``conf/<inst>.runtime`` (JSON ``[kvm_cmd, nics, hvparams, disks]``,
    each disk ``[disk.ToDict(), link, uri]``: Ganeti v3.0.2 hv_kvm ``_SaveKVMRuntime``)."""
    path = paths.kvm_dir / "conf" / f"{name}.runtime"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ActionError(f"{path}: missing (instance not running on this node?)") from None
    except (OSError, ValueError) as err:
        raise ActionError(f"{path}: cannot read it: {err}") from None
    if not isinstance(data, list) or len(data) < 4 or not isinstance(data[3], list):
        raise ActionError(f"{path}: no disk list (runtime file of an older Ganeti?)")
    disks = []
    for index, entry in enumerate(data[3]):
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], dict):
            raise ActionError(f"{path}: disk {index} is not [disk, link, uri]")
        disk = entry[0]
        raw_hvinfo = disk.get("hvinfo")
        hvinfo: dict[str, Any] = raw_hvinfo if isinstance(raw_hvinfo, dict) else {}
        qemu_id = hvinfo.get("id") or qemu_disk_id(str(disk.get("uuid", "")))
        link = entry[1] if len(entry) > 1 and isinstance(entry[1], str) else None
        disks.append(RuntimeDisk(index, qemu_id, link, str(disk.get("dev_type", ""))))
    return disks


def running_instances(paths: Paths) -> Iterator[tuple[str, int]]:
    """(name, pid) of every instance whose QEMU runs on this node, sorted by name."""
    try:
        names = sorted(p.name for p in (paths.kvm_dir / "pid").iterdir())
    except FileNotFoundError:
        return
    for name in names:
        try:
            instance_name(name)
        except BadInput:
            continue
        pid = qemu_pid(paths, name)
        if pid is not None:
            yield name, pid

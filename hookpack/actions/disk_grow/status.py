"""Disk sizes as they are: what QEMU reports (``query-block``) vs the storage's size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookpack.action import Paths
from hookpack.actions.disk_grow import node
from hookpack.actions.disk_grow.plan import find_block, mib
from hookpack.errors import ActionError
from hookpack.record import field, record


@record
class DiskView:
    index: int
    qemu_id: str | None
    storage_path: str
    qemu_size: int | None = None  # bytes, QEMU's virtual size
    storage_size: int | None = None  # bytes, file length or block device size
    error: str | None = None

    @property
    def match(self) -> bool | None:
        if self.qemu_size is None or self.storage_size is None:
            return None
        return self.qemu_size == self.storage_size

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "qemu_id": self.qemu_id,
                "storage_path": self.storage_path, "qemu_size": self.qemu_size,
                "storage_size": self.storage_size, "match": self.match, "error": self.error}


@record
class DisksView:
    disks: list[DiskView] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"disks": [d.to_json() for d in self.disks]}


def observe(paths: Paths, name: str, query_block: Callable[[], Any]) -> DisksView:
    """``query_block`` runs QMP ``query-block``; the storage side is read first, so a
    dead or busy QEMU (the view's error) still shows the storage sizes. Raises
    ActionError when the runtime file cannot be read."""
    view = DisksView()
    for disk in node.runtime_disks(paths, name):
        # the runtime file's link of this disk (index links shift after a hot-remove)
        link = Path(disk.link) if disk.link else node.disk_link(paths, name, disk.index)
        dv = DiskView(disk.index, disk.qemu_id, str(link))
        try:
            dv.storage_size = node.read_storage(link, paths.sysfs_root).size
        except ActionError as err:
            dv.error = str(err)
        view.disks.append(dv)
    if not view.disks:
        return view
    try:
        blocks = query_block()
    except ActionError as err:  # QmpUnavailable, QmpBusy, QmpError
        view.error = f"QEMU: {err}"
        return view
    for dv in view.disks:
        block = find_block(blocks, dv.qemu_id, dv.storage_path)
        if block is None:
            dv.error = dv.error or f"QEMU has no block device {dv.qemu_id or '?'}"
        else:
            dv.qemu_size = block.size
    return view


def describe(dv: DiskView) -> str:
    head = f"disk {dv.index} ({dv.qemu_id or '?'})"
    sizes = []
    if dv.qemu_size is not None:
        sizes.append(f"QEMU {mib(dv.qemu_size)}")
    if dv.storage_size is not None:
        sizes.append(f"storage {mib(dv.storage_size)}")
    text = f"{head}: {', '.join(sizes) or 'sizes unknown'}"
    if dv.match is True:
        text += " ok"
    elif dv.match is False:
        text += " MISMATCH"
    return text + (f" ({dv.error})" if dv.error else "")

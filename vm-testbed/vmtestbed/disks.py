"""Disk backends: a raw file (Ganeti's ``file`` template) and a loop device.

The loop device stands in for LVM/DRBD: QEMU opens it as a host block device,
and for block devices ``block_resize`` only tells QEMU the new size (it refuses
to go past the device's end), whereas for files QEMU truncates the file itself.
"""

from __future__ import annotations

import os
import tempfile
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmtestbed import host
from vmtestbed.errors import TestbedError

MIB = 1024 * 1024
# Backing files of loop devices live in directories with this prefix: the leak
# check recognises our loop devices by it.
LOOP_DIR_PREFIX = "hpt-loop-"


class DiskBackend(Protocol):
    template: str  # Ganeti disk template name: file, plain, drbd ...
    dev_type: str  # Ganeti's dev_type in the runtime file

    def create(self, workdir: Path) -> Path:
        """Make the disk exist; return the path QEMU opens."""
        ...

    def destroy(self) -> None: ...

    @property
    def is_block_device(self) -> bool: ...


@dataclass
class FileDisk:
    """A sparse raw file; ``path`` defaults to ``<kvmnode>/file-storage/<name>``."""

    path: Path | None = None
    size_mib: int = 64
    template: str = "file"
    dev_type: str = "file"
    _created: bool = False

    def create(self, workdir: Path) -> Path:
        """Create the file unless it exists (a restart keeps the disk's content)."""
        if self.path is None:
            workdir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=workdir, prefix="disk-", suffix=".img")
            os.close(fd)
            self.path = Path(name)
            self._created = True
        elif not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            self._created = True
        if self._created:
            os.truncate(self.path, self.size_mib * MIB)
        return self.path

    def grow(self, new_mib: int) -> None:
        """Grow the file (what Ganeti's file storage does before QMP block_resize)."""
        if self.path is None:
            raise TestbedError("file disk not created yet")
        if new_mib * MIB < self.path.stat().st_size:
            raise TestbedError(f"{self.path}: refusing to shrink to {new_mib} MiB")
        os.truncate(self.path, new_mib * MIB)
        self.size_mib = new_mib

    def destroy(self) -> None:
        if self._created and self.path is not None:
            self.path.unlink(missing_ok=True)
            self._created = False

    @property
    def is_block_device(self) -> bool:
        return False


@dataclass
class LoopDisk:
    """A loop device over a sparse file: a block device that can grow like an LV."""

    size_mib: int = 64
    template: str = "plain"
    dev_type: str = "plain"
    device: Path | None = None
    backing: Path | None = None

    def create(self, workdir: Path | None = None) -> Path:
        """Attach a new loop device (or return the one already attached: restarts)."""
        if self.device is not None:
            return self.device
        # The backing file goes to its own hpt-loop-* directory (not workdir) so the
        # leak check can tell our loop devices from anyone else's.
        d = Path(tempfile.mkdtemp(prefix=f"{LOOP_DIR_PREFIX}{host.owner_tag()}-"))
        self.backing = d / "backing.img"
        self.backing.touch()
        os.truncate(self.backing, self.size_mib * MIB)
        try:
            out = host.run(["losetup", "--find", "--show", str(self.backing)]).stdout
        except BaseException:
            self._remove_backing()
            raise
        self.device = Path(out.strip())
        return self.device

    def grow(self, new_mib: int) -> None:
        """Grow the backing file, then ``losetup -c`` so the kernel sees the new size."""
        if self.device is None or self.backing is None:
            raise TestbedError("loop disk not created yet")
        if new_mib < self.size_mib:
            raise TestbedError(f"{self.device}: refusing to shrink to {new_mib} MiB")
        os.truncate(self.backing, new_mib * MIB)
        host.run(["losetup", "-c", str(self.device)])
        self.size_mib = new_mib

    def size_bytes(self) -> int:
        if self.device is None:
            raise TestbedError("loop disk not created yet")
        return int(host.run(["blockdev", "--getsize64", str(self.device)]).stdout)

    def destroy(self) -> None:
        if self.device is not None:
            host.run(["losetup", "-d", str(self.device)], check=False)
            self.device = None
        self._remove_backing()

    def _remove_backing(self) -> None:
        if self.backing is not None:
            self.backing.unlink(missing_ok=True)
            self.backing.parent.rmdir()
            self.backing = None

    @property
    def is_block_device(self) -> bool:
        return True


@dataclass
class DiskSpec:
    """One instance disk: a backend and the Ganeti disk UUID (random by default)."""

    backend: FileDisk | LoopDisk = field(default_factory=FileDisk)
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    @property
    def kvm_id(self) -> str:
        """Ganeti's QEMU id: ``disk-`` + the UUID up to its third dash."""
        return "disk-" + self.uuid.rsplit("-", 2)[0]

    @property
    def size_mib(self) -> int:
        return self.backend.size_mib


def loop_devices() -> dict[str, str]:
    """Attached loop devices: device -> backing file (from ``losetup -l``)."""
    out = host.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"]).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            found[parts[0]] = parts[1].strip()
    return found

"""What Ganeti's KVM hypervisor writes and runs: runtime paths, QEMU arguments, runtime file.

Pure functions, no processes: :mod:`vmtestbed.kvmnode` runs what they build.
Sources: ``lib/hypervisor/hv_kvm/__init__.py`` of Ganeti v3.0.2
(``_GenerateKVMRuntime``, ``_ExecuteKVMRuntime``, ``_GenerateKVMBlockDevicesOptions``,
``_SaveKVMRuntime``, ``_RemoveInstanceRuntimeFiles``) and v3.1.1 for ``-blockdev``;
defaults of a bridged, paravirtual instance booting a kernel with a serial console.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed.disks import DiskSpec
from vmtestbed.netnode import random_mac

QEMU = "qemu-system-x86_64"
# Ganeti reserves PCI slots 0-11 (_DEFAULT_PCI_RESERVATIONS); disks, then NICs,
# get the next free slots in that order.
FIRST_FREE_PCI_SLOT = 12
SERIAL_SPEED = 38400  # hvparam serial_speed default
VARIANTS = ("3.0", "3.1")

HvInfo = dict[str, str]


@dataclass
class NicSpec:
    """One instance NIC: bridge in the netnode, guest address (with prefix), MAC, UUID."""

    bridge: str = "br0"
    ip: str | None = None  # None: the netnode allocates one
    mac: str = field(default_factory=random_mac)
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    @property
    def kvm_id(self) -> str:
        """Ganeti's QEMU id: ``nic-`` + the UUID up to its third dash."""
        return "nic-" + self.uuid.rsplit("-", 2)[0]


@dataclass(frozen=True)
class RuntimeLayout:
    """The runtime directories under ``root`` (``/var/run/ganeti`` on a real node)."""

    root: Path

    @property
    def hv_dir(self) -> Path:
        return self.root / "kvm-hypervisor"

    def make_dirs(self) -> None:
        for sub in ("pid", "ctrl", "conf", "nic", "uid", "chroot"):
            (self.hv_dir / sub).mkdir(parents=True, exist_ok=True)
        for d in ("instance-disks", "log/kvm", "file-storage"):
            (self.root / d).mkdir(parents=True, exist_ok=True)

    def pid_file(self, inst: str) -> Path:
        return self.hv_dir / "pid" / inst

    def ctrl(self, inst: str, kind: str) -> Path:
        """``ctrl/<inst>.<kind>``: kind is qmp, kvmd, monitor or serial."""
        return self.hv_dir / "ctrl" / f"{inst}.{kind}"

    def runtime_file(self, inst: str) -> Path:
        return self.hv_dir / "conf" / f"{inst}.runtime"

    def nic_dir(self, inst: str) -> Path:
        return self.hv_dir / "nic" / inst

    def disk_link(self, inst: str, idx: int) -> Path:
        return self.root / "instance-disks" / f"{inst}:{idx}"

    def qemu_log(self, inst: str) -> Path:
        return self.root / "log" / "kvm" / f"{inst}.log"

    def console_log(self, inst: str) -> Path:
        """Not Ganeti's: the testbed's transcript of the serial console."""
        return self.root / "log" / "kvm" / f"{inst}.console"

    def instance_files(self, inst: str) -> list[Path]:
        """What ``_RemoveInstanceRuntimeFiles`` removes (nic dir included), plus disk links."""
        files = [self.pid_file(inst), self.runtime_file(inst), self.nic_dir(inst)]
        files += [self.ctrl(inst, kind) for kind in ("monitor", "serial", "qmp", "kvmd")]
        files += sorted((self.root / "instance-disks").glob(f"{inst}:*"))
        return files


def assign_hvinfo(disks: Sequence[DiskSpec],
                  nics: Sequence[NicSpec]) -> tuple[list[HvInfo], list[HvInfo]]:
    """``_GenerateDeviceHVInfo`` for every disk, then every NIC (PCI slots from 12)."""
    slots = iter(range(FIRST_FREE_PCI_SLOT, 32))
    disk_info = [_pci_hvinfo("virtio-blk-pci", d.kvm_id, next(slots)) for d in disks]
    nic_info = [_pci_hvinfo("virtio-net-pci", n.kvm_id, next(slots)) for n in nics]
    return disk_info, nic_info


def _pci_hvinfo(driver: str, kvm_id: str, slot: int) -> HvInfo:
    return {"driver": driver, "id": kvm_id, "bus": "pci.0", "addr": hex(slot)}


def hvinfo_str(hvinfo: HvInfo) -> str:
    """``_GenerateDeviceHVInfoStr``: ``driver,id=...,bus=...,addr=...``."""
    d = dict(hvinfo)
    return d.pop("driver") + "".join(f",{k}={v}" for k, v in d.items())


def kernel_append(name: str, nics: Sequence[NicSpec], kernel_args: str = "") -> str:
    """``-append``: Ganeti puts ``root=``, the kernel_args hvparam, then the console."""
    # quiet: the console carries only our markers. cryptomgr.notests: the crypto
    # self-tests cost the TCG guest 1-2 s of its ~3 s boot (measured, see README).
    words = ["root=/dev/vda1", "ro", "quiet", "cryptomgr.notests",
             f"hp.hostname={name.split('.')[0]}"]
    if nics:
        words.append("hp.ip=" + ",".join(n.ip or "-" for n in nics))
    if kernel_args:
        words.append(kernel_args)
    words.append(f"console=ttyS0,{SERIAL_SPEED}")
    return " ".join(words)


def base_command(layout: RuntimeLayout, name: str, inst_uuid: str, vcpus: int,
                 memory_mib: int, kernel: Path, initrd: Path, append: str,
                 extra_args: Sequence[str] = ()) -> list[str]:
    """``_GenerateKVMRuntime``'s command: what the runtime file stores.

    ``extra_args`` sit where the ``kvm_extra`` hvparam goes (the testbed passes
    the accelerator there).
    """
    return [
        QEMU, "-name", name, "-m", str(memory_mib), "-smp", str(vcpus),
        "-pidfile", str(layout.pid_file(name)),
        "-device", "virtio-balloon",
        "-daemonize",
        "-D", str(layout.qemu_log(name)),
        "-machine", default_machine(),
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", append,
        "-monitor", f"unix:{layout.ctrl(name, 'monitor')},server,nowait",
        "-serial", f"unix:{layout.ctrl(name, 'serial')},server,nowait",
        "-usb", "-display", "none",
        "-uuid", inst_uuid,
        *extra_args,
    ]


def nic_args(nic: NicSpec, hvinfo: HvInfo, tap_fd: int) -> list[str]:
    """``_ExecuteKVMRuntime``'s ``-netdev``/``-device`` pair for a tap passed as an fd."""
    return ["-netdev", f"type=tap,id={nic.kvm_id},fd={tap_fd}",
            "-device", f"{hvinfo_str(hvinfo)},netdev={nic.kvm_id},mac={nic.mac}"]


def qmp_args(layout: RuntimeLayout, name: str) -> list[str]:
    """Two QMP monitors: ``.qmp`` for Ganeti (and hooks), ``.kvmd`` for kvmd."""
    return ["-qmp", f"unix:{layout.ctrl(name, 'qmp')},server,nowait",
            "-qmp", f"unix:{layout.ctrl(name, 'kvmd')},server,nowait"]


def disk_args(variant: str, disk: DiskSpec, hvinfo: HvInfo, link: Path) -> list[str]:
    """The disk's ``-device`` plus ``-drive`` (3.0) or ``-blockdev`` (3.1)."""
    kvm_id = disk.kvm_id
    if variant == "3.0":
        # v3.0.2: -device first, then -drive; aio=threads is the disk_aio default;
        # auto-read-only=off since QEMU 4.0. block_resize takes "device".
        return ["-device", f"{hvinfo_str(hvinfo)},drive={kvm_id}",
                "-drive", f"file={link},format=raw,if=none,aio=threads,id={kvm_id},"
                          "auto-read-only=off"]
    if variant != "3.1":
        raise ValueError(f"variant {variant!r}: use one of {VARIANTS}")
    # v3.1.1: _GenerateKVMBlockDevice flattened by DictToQemuStringNotation (bools
    # as on/off); default cache -> writeback on, direct off, no-flush off.
    # block_resize takes "node-name".
    file_driver = "host_device" if disk.backend.is_block_device else "file"
    blockdev = (f"driver=raw,node-name={kvm_id},discard=ignore,cache.direct=off,"
                f"cache.no-flush=off,file.driver={file_driver},file.filename={link},"
                "file.aio=threads,auto-read-only=off")
    return ["-device", f"{hvinfo_str(hvinfo)},drive={kvm_id},write-cache=on",
            "-blockdev", blockdev]


def runtime_json(layout: RuntimeLayout, name: str, kvm_cmd: list[str],
                 disks: Sequence[DiskSpec], disk_hvinfo: Sequence[HvInfo],
                 nics: Sequence[NicSpec], nic_hvinfo: Sequence[HvInfo],
                 hvparams: dict[str, Any]) -> str:
    """``conf/<inst>.runtime`` as ``_SaveKVMRuntime`` writes it:
    ``[kvm_cmd, [nic.ToDict()], hvparams, [[disk.ToDict(), link, uri]]]``.

    The objects are trimmed to the fields hooks read (uuid, hvinfo, mac, ip,
    nicparams, dev_type, size). Ganeti's serializer is plain ``json.dumps`` plus
    a newline.
    """
    serial_nics = [
        {"mac": n.mac, "ip": n.ip.split("/")[0] if n.ip else None, "uuid": n.uuid,
         "name": None, "network": None,
         "nicparams": {"mode": "bridged", "link": n.bridge, "vlan": ""},
         "hvinfo": hv}
        for n, hv in zip(nics, nic_hvinfo, strict=True)
    ]
    serial_disks = [
        [{"dev_type": d.backend.dev_type, "size": d.size_mib, "mode": "rw",
          "uuid": d.uuid, "name": None, "iv_name": f"disk/{i}", "params": {},
          "hvinfo": hv},
         str(layout.disk_link(name, i)), None]
        for i, (d, hv) in enumerate(zip(disks, disk_hvinfo, strict=True))
    ]
    return json.dumps([kvm_cmd, serial_nics, hvparams, serial_disks]) + "\n"


def default_hvparams(kernel: Path, initrd: Path, variant: str) -> dict[str, Any]:
    """The hvparams of a bridged paravirtual instance with a serial console."""
    return {
        "kvm_path": QEMU, "kernel_path": str(kernel), "initrd_path": str(initrd),
        "root_path": "/dev/vda1", "kernel_args": "ro", "serial_console": True,
        "serial_speed": SERIAL_SPEED, "disk_type": "paravirtual", "nic_type": "paravirtual",
        "vnet_hdr": True, "cpu_mask": "all", "acpi": True, "disk_cache": "default",
        "kvm_flag": "", "disk_aio": "threads", "kvm_extra": "", "machine_version": "",
        "vhost_net": False, "virtio_net_queues": 1,
        "vmtestbed_variant": variant,
    }


@functools.cache
def default_machine() -> str:
    """QEMU's default machine version, found like Ganeti's _GetDefaultMachineVersion."""
    out = subprocess.run([QEMU, "-machine", "help"], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"^(\S+).*\(default\)", out, re.MULTILINE)
    return m.group(1) if m else "pc"

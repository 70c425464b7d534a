"""QEMU launcher that lays out its runtime files like Ganeti 3.0's KVM hypervisor.

Under ``root`` (standing in for ``/var/run/ganeti``)::

    kvm-hypervisor/pid/<inst>              QEMU's pid (QEMU writes it: -pidfile)
    kvm-hypervisor/ctrl/<inst>.qmp         QMP socket (what hooks use)
    kvm-hypervisor/ctrl/<inst>.kvmd        second QMP socket (Ganeti's kvmd)
    kvm-hypervisor/ctrl/<inst>.monitor     human monitor
    kvm-hypervisor/ctrl/<inst>.serial      serial console
    kvm-hypervisor/conf/<inst>.runtime     JSON [kvm_cmd, nics, hvparams, disks]
    kvm-hypervisor/nic/<inst>/<idx>        tap name of NIC idx
    instance-disks/<inst>:<idx>            symlink to the disk (file or block device)
    log/kvm/<inst>.log                     QEMU's -D log

The command line follows ``hv_kvm._GenerateKVMRuntime`` and
``_ExecuteKVMRuntime`` of Ganeti v3.0.2 (``variant="3.0"``: ``-drive ...,id=disk-<uuid3>``)
or v3.1.1 (``variant="3.1"``: ``-blockdev node-name=disk-<uuid3>``), with the
defaults of a bridged paravirtual instance: taps opened before QEMU and passed
as ``fd=N``, QEMU started with ``-S -daemonize``, then ``cont`` over QMP.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed import accel, host
from vmtestbed.console import SerialConsole
from vmtestbed.disks import DiskSpec, LoopDisk
from vmtestbed.errors import TestbedError
from vmtestbed.guest import BOOT_MARKER, GuestImage, build_guest_image
from vmtestbed.netnode import NetNode, random_mac
from vmtestbed.qmp import QMPClient

QEMU = accel.QEMU
# Ganeti reserves PCI slots 0-11 (_DEFAULT_PCI_RESERVATIONS); disks, then NICs,
# get the next free slots in that order.
FIRST_FREE_PCI_SLOT = 12
SERIAL_SPEED = 38400


@dataclass
class NicSpec:
    """One instance NIC: bridge in the netnode, guest address (with prefix), MAC, UUID."""

    bridge: str = "br0"
    ip: str | None = None  # None: the netnode allocates one
    mac: str = field(default_factory=random_mac)
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    @property
    def kvm_id(self) -> str:
        return "nic-" + self.uuid.rsplit("-", 2)[0]


@dataclass
class RunningInstance:
    """A started QEMU. ``console`` is connected; ``stop()`` powers it off."""

    name: str
    pid: int
    node: KvmNode
    qmp_path: Path
    kvmd_path: Path
    serial_path: Path
    runtime_path: Path
    taps: list[str]
    disks: list[DiskSpec]
    nics: list[NicSpec]
    vcpus: int
    console: SerialConsole
    boot_seconds: float | None = None
    start_args: dict[str, Any] = field(default_factory=dict)

    @property
    def disk_ids(self) -> list[str]:
        """QEMU ids of the disks (``disk-<uuid3>``): the ``device`` / ``node-name``."""
        return [d.kvm_id for d in self.disks]

    @property
    def ips(self) -> list[str]:
        return [n.ip.split("/")[0] for n in self.nics if n.ip]

    def qmp(self, timeout: float = 10.0) -> QMPClient:
        """A new QMP session on ``ctrl/<inst>.qmp`` (use as a context manager)."""
        return QMPClient(self.qmp_path, timeout=timeout)

    def vcpu_threads(self) -> list[int]:
        """Host thread ids of the vCPUs (QMP ``query-cpus-fast``), in vCPU order."""
        with self.qmp() as q:
            cpus = q.execute("query-cpus-fast")
        return [c["thread-id"] for c in sorted(cpus, key=lambda c: c["cpu-index"])]

    def wait_boot(self, timeout: float = 60.0) -> float:
        """Wait for the guest's boot marker; return the guest's uptime at that point."""
        m = self.console.wait_for(rf"^{BOOT_MARKER} uptime=([\d.]+)", timeout)
        return float(m.group(1))

    def check_output(self, argv: Sequence[str], timeout: float = 60.0) -> str:
        """Run argv in the guest (over the console); runner for ``iperf.measure``."""
        return self.console.run(shlex.join(argv), timeout=timeout)

    def alive(self) -> bool:
        return host.pid_alive(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """ACPI ``system_powerdown``, wait up to ``timeout``, then kill QEMU by its pid."""
        if self.alive():
            try:
                with self.qmp(timeout=5) as q:
                    q.execute("system_powerdown")
            except (OSError, TestbedError):
                pass  # QEMU busy or gone: the kill below settles it
            if not host.wait_dead(self.pid, timeout):
                host.kill_owned(self.pid, timeout=5)
        self.console.close()
        self.node._cleanup_runtime_files(self.name)
        self.node.instances.pop(self.name, None)

    def kill(self) -> None:
        """Stop QEMU at once (SIGTERM then SIGKILL), no guest shutdown."""
        host.kill_owned(self.pid, timeout=5)
        self.console.close()
        self.node._cleanup_runtime_files(self.name)
        self.node.instances.pop(self.name, None)


class KvmNode:
    """Directory tree + QEMU launcher of one Ganeti KVM node (see module docstring)."""

    def __init__(self, root: Path, netnode: NetNode | None = None,
                 image: GuestImage | None = None) -> None:
        self.root = root
        self.netnode = netnode
        self._image = image
        self.instances: dict[str, RunningInstance] = {}
        self._disks: list[DiskSpec] = []
        self.hv_dir = root / "kvm-hypervisor"
        for sub in ("pid", "ctrl", "conf", "nic", "uid", "chroot"):
            (self.hv_dir / sub).mkdir(parents=True, exist_ok=True)
        (root / "instance-disks").mkdir(parents=True, exist_ok=True)
        (root / "log" / "kvm").mkdir(parents=True, exist_ok=True)
        (root / "file-storage").mkdir(parents=True, exist_ok=True)

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            self._image = build_guest_image()
        return self._image

    # -- paths, as Ganeti names them ------------------------------------------
    def pid_file(self, inst: str) -> Path:
        return self.hv_dir / "pid" / inst

    def ctrl(self, inst: str, kind: str) -> Path:
        return self.hv_dir / "ctrl" / f"{inst}.{kind}"

    def runtime_file(self, inst: str) -> Path:
        return self.hv_dir / "conf" / f"{inst}.runtime"

    def nic_dir(self, inst: str) -> Path:
        return self.hv_dir / "nic" / inst

    def disk_link(self, inst: str, idx: int) -> Path:
        return self.root / "instance-disks" / f"{inst}:{idx}"

    # -- start -----------------------------------------------------------------
    def start_instance(
        self,
        name: str,
        vcpus: int = 1,
        memory_mib: int = 128,
        disks: Sequence[DiskSpec] = (),
        nics: Sequence[NicSpec] = (),
        variant: str = "3.0",
        extra_args: Sequence[str] = (),
        kernel_args: str = "",
        wait_boot: bool = True,
        boot_timeout: float = 60.0,
    ) -> RunningInstance:
        """Start a guest the way Ganeti 3.0 (or 3.1) does; by default wait for its boot.

        Disks are created (``backend.create``) and destroyed by :meth:`close`.
        NICs need a ``netnode``; a NIC without ``ip`` gets one from it.
        """
        if variant not in ("3.0", "3.1"):
            raise ValueError(f"variant {variant!r}: use '3.0' or '3.1'")
        if name in self.instances or host.pid_alive(self._read_pid(name)):
            raise TestbedError(f"instance {name}: already running")
        if nics and self.netnode is None:
            raise TestbedError(f"instance {name}: NICs need a KvmNode with a netnode")
        disks, nics = list(disks), list(nics)
        for nic in nics:
            if nic.ip is None:
                assert self.netnode is not None
                nic.ip = self.netnode.allocate_ip()
        for idx, disk in enumerate(disks):
            if all(disk is not known for known in self._disks):
                self._disks.append(disk)
            target = disk.backend.create(self.root / "file-storage" / name)
            link = self.disk_link(name, idx)
            link.unlink(missing_ok=True)
            link.symlink_to(target)

        inst_uuid = str(uuidlib.uuid4())
        kvm_cmd = self._base_command(name, inst_uuid, vcpus, memory_mib, nics, kernel_args,
                                     extra_args)
        slot = FIRST_FREE_PCI_SLOT
        disk_hvinfo = []
        for disk in disks:
            disk_hvinfo.append(_hvinfo("virtio-blk-pci", disk.kvm_id, slot))
            slot += 1
        nic_hvinfo = []
        for nic in nics:
            nic_hvinfo.append(_hvinfo("virtio-net-pci", nic.kvm_id, slot))
            slot += 1
        self._write_runtime(name, kvm_cmd, disks, disk_hvinfo, nics, nic_hvinfo, variant)

        taps: list[str] = []
        fds: list[int] = []
        console: SerialConsole | None = None
        pid = 0
        try:
            cmd = list(kvm_cmd)
            for nic, hvinfo in zip(nics, nic_hvinfo, strict=True):
                assert self.netnode is not None
                tap, fd = self.netnode.create_tap(nic.bridge)
                taps.append(tap)
                fds.append(fd)
                cmd += ["-netdev", f"type=tap,id={nic.kvm_id},fd={fd}",
                        "-device", f"{_hvinfo_str(hvinfo)},netdev={nic.kvm_id},mac={nic.mac}"]
            cmd += ["-qmp", f"unix:{self.ctrl(name, 'qmp')},server,nowait",
                    "-qmp", f"unix:{self.ctrl(name, 'kvmd')},server,nowait"]
            for idx, (disk, hvinfo) in enumerate(zip(disks, disk_hvinfo, strict=True)):
                cmd += _disk_args(variant, disk, hvinfo, self.disk_link(name, idx))
            cmd += ["-S"]
            pid = self._run_qemu(name, cmd, fds)
            # Ganeti writes the nic files right after QEMU started, before cont.
            self.nic_dir(name).mkdir(exist_ok=True)
            for idx, tap in enumerate(taps):
                (self.nic_dir(name) / str(idx)).write_text(tap)
            # Connect the console while the guest is paused so no boot output is lost.
            console = SerialConsole(self.ctrl(name, "serial"),
                                    log_path=self.root / "log" / "kvm" / f"{name}.console")
            t0 = time.monotonic()
            with QMPClient(self.ctrl(name, "qmp")) as q:
                q.execute("cont")
            inst = RunningInstance(
                name=name, pid=pid, node=self, qmp_path=self.ctrl(name, "qmp"),
                kvmd_path=self.ctrl(name, "kvmd"), serial_path=self.ctrl(name, "serial"),
                runtime_path=self.runtime_file(name), taps=taps, disks=disks, nics=nics,
                vcpus=vcpus, console=console,
                start_args={"vcpus": vcpus, "memory_mib": memory_mib, "disks": disks,
                            "nics": nics, "variant": variant, "extra_args": extra_args,
                            "kernel_args": kernel_args},
            )
            self.instances[name] = inst
            if wait_boot:
                inst.wait_boot(boot_timeout)
                inst.boot_seconds = time.monotonic() - t0
            return inst
        except BaseException:
            if name in self.instances:
                self.instances.pop(name).kill()
            else:
                if pid and host.pid_alive(pid):
                    host.kill_owned(pid, timeout=5)
                if console is not None:
                    console.close()
                self._cleanup_runtime_files(name)
            raise
        finally:
            for fd in fds:  # QEMU holds its own copies; ours would keep the taps alive
                os.close(fd)

    def _base_command(self, name: str, inst_uuid: str, vcpus: int, memory_mib: int,
                      nics: Sequence[NicSpec], kernel_args: str,
                      extra_args: Sequence[str]) -> list[str]:
        """What ``_GenerateKVMRuntime`` returns (and the runtime file stores)."""
        hp_args = ["quiet", f"hp.hostname={name.split('.')[0]}"]
        if nics:
            hp_args.append("hp.ip=" + ",".join(n.ip or "-" for n in nics))
        append = " ".join(["root=/dev/vda1", "ro", *hp_args, kernel_args,
                           f"console=ttyS0,{SERIAL_SPEED}"]).replace("  ", " ")
        return [
            QEMU, "-name", name, "-m", str(memory_mib), "-smp", str(vcpus),
            "-pidfile", str(self.pid_file(name)),
            "-device", "virtio-balloon",
            "-daemonize",
            "-D", str(self.root / "log" / "kvm" / f"{name}.log"),
            "-machine", _default_machine(),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", append,
            "-monitor", f"unix:{self.ctrl(name, 'monitor')},server,nowait",
            "-serial", f"unix:{self.ctrl(name, 'serial')},server,nowait",
            "-usb", "-display", "none",
            "-uuid", inst_uuid,
            # Ganeti's kvm_extra hvparam goes here; we use it for the accelerator.
            *accel.accel_args(self.image),
            *extra_args,
        ]

    def _write_runtime(self, name: str, kvm_cmd: list[str], disks: list[DiskSpec],
                       disk_hvinfo: list[dict[str, str]], nics: list[NicSpec],
                       nic_hvinfo: list[dict[str, str]], variant: str) -> None:
        """``conf/<inst>.runtime`` as ``_SaveKVMRuntime`` writes it (objects trimmed to
        the fields hooks read: uuid, hvinfo, mac/ip/nicparams, dev_type/size)."""
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
             str(self.disk_link(name, i)), None]
            for i, (d, hv) in enumerate(zip(disks, disk_hvinfo, strict=True))
        ]
        hvparams = {
            "kvm_path": QEMU, "kernel_path": str(self.image.kernel),
            "initrd_path": str(self.image.initrd), "root_path": "/dev/vda1",
            "kernel_args": "ro", "serial_console": True, "serial_speed": SERIAL_SPEED,
            "disk_type": "paravirtual", "nic_type": "paravirtual", "vnet_hdr": True,
            "cpu_mask": "all", "acpi": True, "disk_cache": "default", "kvm_flag": "",
            "disk_aio": "threads", "kvm_extra": "", "machine_version": "",
            "vhost_net": False, "virtio_net_queues": 1,
            "hookpack_testbed_variant": variant,
        }
        # Ganeti's serializer.DumpJson: plain json.dumps, trailing newline.
        text = json.dumps([kvm_cmd, serial_nics, hvparams, serial_disks]) + "\n"
        self.runtime_file(name).write_text(text)

    def _run_qemu(self, name: str, cmd: list[str], fds: list[int]) -> int:
        """Run QEMU with -daemonize: the parent exits once the child is set up."""
        self.pid_file(name).unlink(missing_ok=True)
        proc = subprocess.run(cmd, pass_fds=fds, env=host.owned_env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise TestbedError(f"instance {name}: QEMU failed to start (exit "
                               f"{proc.returncode}): {proc.stderr.strip()}")
        pid = self._read_pid(name)
        if not pid:
            raise TestbedError(f"instance {name}: QEMU wrote no pid file")
        return pid

    def _read_pid(self, name: str) -> int:
        try:
            return int(self.pid_file(name).read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _cleanup_runtime_files(self, name: str) -> None:
        """What ``_RemoveInstanceRuntimeFiles`` removes, plus the disk links."""
        self.pid_file(name).unlink(missing_ok=True)
        for kind in ("monitor", "serial", "qmp", "kvmd"):
            self.ctrl(name, kind).unlink(missing_ok=True)
        self.runtime_file(name).unlink(missing_ok=True)
        shutil.rmtree(self.nic_dir(name), ignore_errors=True)
        for link in (self.root / "instance-disks").glob(f"{name}:*"):
            link.unlink(missing_ok=True)

    def restart_instance(self, name: str, wait_boot: bool = True,
                         boot_timeout: float = 60.0) -> RunningInstance:
        """Stop and start again with the same disks and NICs, as Ganeti's KVM reboot
        does: a new QEMU process, new taps (the kernel may reuse a freed tapN name),
        new vCPU threads, disks kept."""
        old = self.instances[name]
        args = dict(old.start_args)
        old.stop()
        return self.start_instance(name, wait_boot=wait_boot, boot_timeout=boot_timeout,
                                   **args)

    # -- teardown ------------------------------------------------------------
    def close(self) -> None:
        """Kill every instance still running (no ACPI wait) and destroy the disks."""
        errors = []
        for inst in list(self.instances.values()):
            try:
                inst.kill()
            except (OSError, TestbedError) as exc:
                errors.append(f"{inst.name}: {exc}")
        for disk in self._disks:
            with contextlib.suppress(OSError, TestbedError):
                disk.backend.destroy()
        self._disks.clear()
        if errors:
            raise TestbedError("kvmnode cleanup incomplete: " + "; ".join(errors))

    def __enter__(self) -> KvmNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_state(self) -> dict[str, Any]:
        """What ``vm-testbed down`` needs to remove this node's objects later."""
        loops = [d.backend for d in self._disks if isinstance(d.backend, LoopDisk)]
        return {"root": str(self.root),
                "instances": {n: i.pid for n, i in self.instances.items()},
                "loop_devices": [str(b.device) for b in loops if b.device],
                "loop_backings": [str(b.backing) for b in loops if b.backing]}


def _hvinfo(driver: str, kvm_id: str, slot: int) -> dict[str, str]:
    """``_GenerateDeviceHVInfo`` for a PCI device."""
    return {"driver": driver, "id": kvm_id, "bus": "pci.0", "addr": hex(slot)}


def _hvinfo_str(hvinfo: dict[str, str]) -> str:
    d = dict(hvinfo)
    return d.pop("driver") + "".join(f",{k}={v}" for k, v in d.items())


def _disk_args(variant: str, disk: DiskSpec, hvinfo: dict[str, str], link: Path) -> list[str]:
    kvm_id = disk.kvm_id
    if variant == "3.0":
        # v3.0.2 _GenerateKVMBlockDevicesOptions: -device first, then -drive; aio=threads
        # is the default disk_aio; auto-read-only=off since QEMU 4.0.
        return ["-device", f"{_hvinfo_str(hvinfo)},drive={kvm_id}",
                "-drive", f"file={link},format=raw,if=none,aio=threads,id={kvm_id},"
                          "auto-read-only=off"]
    # v3.1.1: _GenerateKVMBlockDevice flattened by DictToQemuStringNotation
    # (bools as on/off); default cache -> writeback on, direct off, no-flush off.
    file_driver = "host_device" if disk.backend.is_block_device else "file"
    blockdev = (f"driver=raw,node-name={kvm_id},discard=ignore,cache.direct=off,"
                f"cache.no-flush=off,file.driver={file_driver},file.filename={link},"
                "file.aio=threads,auto-read-only=off")
    return ["-device", f"{_hvinfo_str(hvinfo)},drive={kvm_id},write-cache=on",
            "-blockdev", blockdev]


@functools.cache
def _default_machine() -> str:
    """QEMU's default machine version, found like Ganeti's _GetDefaultMachineVersion."""
    out = subprocess.run([QEMU, "-machine", "help"], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"^(\S+).*\(default\)", out, re.MULTILINE)
    return m.group(1) if m else "pc"

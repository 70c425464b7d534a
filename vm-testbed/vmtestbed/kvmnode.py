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

The arguments and the runtime file come from :mod:`vmtestbed.ganeti_kvm`, which
follows ``hv_kvm._GenerateKVMRuntime`` and
``_ExecuteKVMRuntime`` of Ganeti v3.0.2 (``variant="3.0"``: ``-drive ...,id=disk-<uuid3>``)
or v3.1.1 (``variant="3.1"``: ``-blockdev node-name=disk-<uuid3>``), with the
defaults of a bridged paravirtual instance: taps opened before QEMU and passed
as ``fd=N``, QEMU started with ``-S -daemonize``, then ``cont`` over QMP.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed import accel, ganeti_kvm, host
from vmtestbed.console import SerialConsole
from vmtestbed.disks import DiskSpec, LoopDisk
from vmtestbed.errors import TestbedError
from vmtestbed.ganeti_kvm import NicSpec, RuntimeLayout
from vmtestbed.guest import BOOT_MARKER, GuestImage, build_guest_image
from vmtestbed.netnode import NetNode
from vmtestbed.qmp import QMPClient

__all__ = ["DiskSpec", "KvmNode", "NicSpec", "RunningInstance"]


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

    def start_iperf_server(self, port: int = 5201, timeout: float = 20.0) -> int:
        """Run ``iperf3 -s -D`` in the guest (a sink for traffic towards it)."""
        self.console.run(f"iperf3 -s -D -p {port}", timeout=timeout)
        # -D returns before the server listens; wait until it does
        self.console.run(f"i=0; until netstat -ltn | grep -q ':{port} '; do "
                         f"i=$((i+1)); [ $i -gt 50 ] && exit 1; usleep 100000; done",
                         timeout=timeout)
        return port

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
        self.layout = RuntimeLayout(root)
        self.layout.make_dirs()

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            self._image = build_guest_image()
        return self._image

    # Paths, as Ganeti names them (see ganeti_kvm.RuntimeLayout).
    def pid_file(self, inst: str) -> Path:
        return self.layout.pid_file(inst)

    def ctrl(self, inst: str, kind: str) -> Path:
        return self.layout.ctrl(inst, kind)

    def runtime_file(self, inst: str) -> Path:
        return self.layout.runtime_file(inst)

    @property
    def hv_dir(self) -> Path:
        """`kvm-hypervisor/` under the root: what hookpack's paths.kvm_dir points at."""
        return self.layout.hv_dir

    def nic_dir(self, inst: str) -> Path:
        return self.layout.nic_dir(inst)

    def disk_link(self, inst: str, idx: int) -> Path:
        return self.layout.disk_link(inst, idx)

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
        if variant not in ganeti_kvm.VARIANTS:
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
        layout = self.layout
        taps: list[str] = []
        fds: list[int] = []
        console: SerialConsole | None = None
        pid = 0
        try:
            for idx, disk in enumerate(disks):
                if all(disk is not known for known in self._disks):
                    self._disks.append(disk)  # destroyed by close(), kept over restarts
                target = disk.backend.create(layout.root / "file-storage" / name)
                link = layout.disk_link(name, idx)
                link.unlink(missing_ok=True)
                link.symlink_to(target)

            kvm_cmd = ganeti_kvm.base_command(
                layout, name, str(uuidlib.uuid4()), vcpus, memory_mib, self.image.kernel,
                self.image.initrd, ganeti_kvm.kernel_append(name, nics, kernel_args),
                extra_args=(*accel.accel_args(self.image), *extra_args),
            )
            disk_hvinfo, nic_hvinfo = ganeti_kvm.assign_hvinfo(disks, nics)
            hvparams = ganeti_kvm.default_hvparams(self.image.kernel, self.image.initrd, variant)
            layout.runtime_file(name).write_text(ganeti_kvm.runtime_json(
                layout, name, kvm_cmd, disks, disk_hvinfo, nics, nic_hvinfo, hvparams))

            cmd = list(kvm_cmd)
            for nic, hvinfo in zip(nics, nic_hvinfo, strict=True):
                assert self.netnode is not None
                tap, fd = self.netnode.create_tap(nic.bridge)
                taps.append(tap)
                fds.append(fd)
                cmd += ganeti_kvm.nic_args(nic, hvinfo, fd)
            cmd += ganeti_kvm.qmp_args(layout, name)
            for idx, (disk, hvinfo) in enumerate(zip(disks, disk_hvinfo, strict=True)):
                cmd += ganeti_kvm.disk_args(variant, disk, hvinfo, layout.disk_link(name, idx))
            cmd += ["-S"]
            pid = self._run_qemu(name, cmd, fds)
            # Ganeti writes the nic files right after QEMU started, before cont.
            self.nic_dir(name).mkdir(exist_ok=True)
            for idx, tap in enumerate(taps):
                (self.nic_dir(name) / str(idx)).write_text(tap)
            # Connect the console while the guest is paused so no boot output is lost.
            console = SerialConsole(self.ctrl(name, "serial"),
                                    log_path=layout.console_log(name))
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
        for path in self.layout.instance_files(name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

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

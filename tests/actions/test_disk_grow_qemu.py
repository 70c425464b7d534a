"""disk-grow against real QEMU guests laid out like a Ganeti KVM node (vm-testbed).

The hook is installed (`hookpack hooks install`) and run the way Ganeti's node daemon
runs it (emulator), with a recorded grow-disk environment rewritten for the guest
(its name, disk UUID, new size) and a config whose [paths] point at the KvmNode root.
What counts is what the guest sees in /sys/block/vda/size, without a reboot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from vmtestbed import host
from vmtestbed.disks import DiskSpec, FileDisk, LoopDisk
from vmtestbed.guest import DISK_MARKER_RE
from vmtestbed.kvmnode import KvmNode
from vmtestbed.qmp import QMPClient

from hookpack.emulator import run_hooks
from tests.helpers.entries import actions_entry

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MIB = 1 << 20
NODE = "node1.example.test"  # primary (and master) in the recorded environment
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def node(guest_image, request):
    """A KvmNode without network (the guests need none here), torn down always."""
    root = Path(tempfile.mkdtemp(prefix=f"{host.NAME_PREFIX}{host.owner_tag()}-"))
    kvm = KvmNode(root, image=guest_image)
    try:
        yield kvm
    finally:
        try:
            kvm.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def hooks(node, tmp_path):
    """hookpack's entries installed into a hooks tree; config [paths] -> the KvmNode."""
    config = tmp_path / "hookpack.toml"
    config.write_text(
        f'[log]\nsyslog = false\n[node]\nfqdn = "{NODE}"\n[paths]\n'
        f'kvm_dir = "{node.hv_dir}"\ninstance_disks_dir = "{node.root / "instance-disks"}"\n'
        f'run_dir = "{tmp_path / "run"}"\nstate_dir = "{tmp_path / "state"}"\n')
    config.chmod(0o600)
    root = tmp_path / "hooks"
    subprocess.run([sys.executable, "-m", "hookpack", "hooks", "install", "--root", str(root),
                    "--entry-config", str(config)], check=True, capture_output=True)
    return root, config


def grow_env(sample, inst, disk: DiskSpec, new_mib: int) -> dict[str, str]:
    """The recorded disk-grow post environment, made to describe this guest's disk 0."""
    environ, _ = sample("disk-grow-post-node1")
    out = {}
    for key, value in environ.items():
        value = value.replace("inst1.example.test", inst.name)
        if key.endswith("DISK0_UUID"):
            value = disk.uuid
        elif key.endswith("DISK0_DEV_TYPE"):
            value = disk.backend.dev_type
        out[key] = value
    out["GANETI_AMOUNT"] = out["GANETI_POST_AMOUNT"] = str(new_mib - disk.size_mib)
    out["GANETI_POST_INSTANCE_DISK0_SIZE"] = str(new_mib)
    return out


def run_hook(root: Path, environ: dict[str, str]) -> str:
    [result] = actions_entry(run_hooks(root, "disk-grow", "post", environ))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def guest_bytes(inst) -> int:
    return int(inst.console.run("cat /sys/block/vda/size")) * 512


def guest_uptime(inst) -> float:
    return float(inst.console.run("cat /proc/uptime").split()[0])


def hookpack_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookpack", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("variant", ["3.0", "3.1"])
def test_file_disk_grows_live_and_a_second_run_changes_nothing(node, hooks, sample, variant):
    root, _ = hooks
    disk = DiskSpec(FileDisk(size_mib=64))
    inst = node.start_instance("dg-file.example.test", disks=[disk], variant=variant)
    assert guest_bytes(inst) == 64 * MIB
    up_before = guest_uptime(inst)
    environ = grow_env(sample, inst, disk, 128)
    disk.backend.grow(128)  # what Ganeti's grow-disk does to the storage

    line = run_hook(root, environ)
    key = "device" if variant == "3.0" else "node-name"
    assert line.startswith(f"hookpack disk-grow: {inst.name}: changed: disk 0: grown 64 MiB "
                           f"-> 128 MiB ({key} {disk.kvm_id}) (disk-grow/post, 1 change, ")
    m = inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert (m["dev"], int(m["size"])) == ("vda", 128 * MIB)
    assert guest_bytes(inst) == 128 * MIB
    assert inst.alive() and guest_uptime(inst) > up_before  # no reboot
    assert disk.backend.path.stat().st_size == 128 * MIB

    again = run_hook(root, environ)
    assert again.startswith(f"hookpack disk-grow: {inst.name}: nochange: disk 0: QEMU already "
                            "sees 128 MiB (disk-grow/post, 0 changes, ")


def test_loop_block_device_grows_live(node, hooks, sample):
    root, config = hooks
    disk = DiskSpec(LoopDisk(size_mib=64))
    inst = node.start_instance("dg-loop.example.test", disks=[disk], variant="3.0")
    up_before = guest_uptime(inst)
    environ = grow_env(sample, inst, disk, 80)
    disk.backend.grow(80)  # truncate + losetup -c, as lvextend would

    assert hookpack_cli(config, "disk", "check").returncode == 1  # drift seen
    line = run_hook(root, environ)
    assert f": changed: disk 0: grown 64 MiB -> 80 MiB (device {disk.kvm_id})" in line
    inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert guest_bytes(inst) == 80 * MIB
    assert guest_uptime(inst) > up_before
    assert ": nochange: disk 0: QEMU already sees 80 MiB" in run_hook(root, environ)
    check = hookpack_cli(config, "disk", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == (f"{inst.name}: disk 0 ({disk.kvm_id}): QEMU 80 MiB, storage "
                            "80 MiB: ok\n")


def test_data_loss_guard_refuses_a_wrong_size_and_the_file_keeps_its_bytes(node, hooks,
                                                                          sample):
    root, config = hooks
    disk = DiskSpec(FileDisk(size_mib=64))
    inst = node.start_instance("dg-guard.example.test", disks=[disk], variant="3.0")
    path = disk.backend.path
    disk.backend.grow(96)
    tail = os.urandom(4096)
    with path.open("r+b") as f:  # data in the last MiB, past where Ganeti's 80 MiB ends
        f.seek(96 * MIB - len(tail))
        f.write(tail)
    environ = grow_env(sample, inst, disk, 80)  # Ganeti's number disagrees with the file

    line = run_hook(root, environ)
    assert f"hookpack disk-grow: {inst.name}: failed: disk 0: file is 96 MiB but Ganeti says " \
           "80 MiB; refusing block_resize (QEMU truncates the file" in line
    assert path.stat().st_size == 96 * MIB
    with path.open("rb") as f:
        f.seek(96 * MIB - len(tail))
        assert f.read() == tail
    assert guest_bytes(inst) == 64 * MIB

    # The operator looks, then tells QEMU the file's own size by hand.
    check = hookpack_cli(config, "disk", "check")
    assert check.returncode == 1
    assert check.stdout == (f"{inst.name}: disk 0 ({disk.kvm_id}): QEMU 64 MiB, storage 96 MiB:"
                            f" DRIFT; fix: hookpack disk resize {inst.name} --disk 0\n")
    dry = hookpack_cli(config, "disk", "resize", inst.name, "--dry-run")
    assert dry.stdout == (f"{inst.name}: nochange: disk 0: would grow 64 MiB -> 96 MiB "
                          f"(device {disk.kvm_id})\n")
    assert guest_bytes(inst) == 64 * MIB
    done = hookpack_cli(config, "disk", "resize", inst.name, "--disk", "0")
    assert done.returncode == 0 and ": changed: disk 0: grown 64 MiB -> 96 MiB" in done.stdout
    inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert guest_bytes(inst) == 96 * MIB
    with path.open("rb") as f:
        f.seek(96 * MIB - len(tail))
        assert f.read() == tail


def test_busy_qmp_socket_is_waited_for_and_dead_qemu_is_a_clean_skip(node, hooks, sample):
    root, _ = hooks
    disk = DiskSpec(FileDisk(size_mib=64))
    inst = node.start_instance("dg-busy.example.test", disks=[disk], variant="3.0")
    environ = grow_env(sample, inst, disk, 96)
    disk.backend.grow(96)

    held = threading.Event()

    def hold_socket() -> None:  # another client (Ganeti) holds QMP for 1.5 s
        with QMPClient(inst.qmp_path):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold_socket)
    holder.start()
    try:
        assert held.wait(10)
        start = time.monotonic()
        line = run_hook(root, environ)
        waited = time.monotonic() - start
    finally:
        holder.join()
    assert ": changed: disk 0: grown 64 MiB -> 96 MiB" in line
    assert waited >= 1.0, f"hook did not wait for the busy socket ({waited:.2f} s)"
    inst.console.wait_for(DISK_MARKER_RE, timeout=15)

    # QEMU crashes (SIGKILL: it cannot remove its -pidfile); the runtime files stay.
    host.kill_owned(inst.pid, timeout=5, sig=signal.SIGKILL)
    assert (node.hv_dir / "pid" / inst.name).exists() and inst.qmp_path.exists()
    line = run_hook(root, environ)
    assert re.search(r": skipped: instance not running on this node \(no live QEMU\) "
                     r"\(disk-grow/post, 0 changes, \d+ ms\)$", line), line


def test_harmless_where_ganeti_31_already_sent_block_resize(node, hooks, sample):
    root, _ = hooks
    disk = DiskSpec(FileDisk(size_mib=64))
    inst = node.start_instance("dg-g31.example.test", disks=[disk], variant="3.1")
    environ = grow_env(sample, inst, disk, 96)
    disk.backend.grow(96)
    with QMPClient(inst.qmp_path) as qmp:  # what Ganeti 3.1+ does after grow-disk
        qmp.execute("block_resize", {"node-name": disk.kvm_id, "size": 96 * MIB})
    inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    line = run_hook(root, environ)
    assert ": nochange: disk 0: QEMU already sees 96 MiB (disk-grow/post, 0 changes, " in line
    assert guest_bytes(inst) == 96 * MIB


def test_storage_short_of_what_ganeti_recorded_fails_naming_device_and_sizes(node, hooks,
                                                                            sample):
    """Issue 20 (a): the LV or LUN on this node is smaller than Ganeti's new size (not yet
    extended / rescanned): a failure naming the device and both sizes, nothing written,
    not "QEMU already sees"."""
    root, _ = hooks
    disk = DiskSpec(LoopDisk(size_mib=64))
    inst = node.start_instance("dg-short.example.test", disks=[disk], variant="3.0")
    environ = grow_env(sample, inst, disk, 128)
    line = run_hook(root, environ)  # the storage has not grown at all
    device = os.path.realpath(node.disk_link(inst.name, 0))
    assert device.startswith("/dev/loop"), device
    assert (f": failed: disk 0 (device {disk.kvm_id}): {device}: storage is 64 MiB, smaller "
            "than the 128 MiB Ganeti recorded") in line, line
    assert "QEMU left at 64 MiB" in line
    disk.backend.grow(96)  # extended, but not as far as Ganeti says
    assert "storage is 96 MiB, smaller than the 128 MiB" in run_hook(root, environ)
    assert guest_bytes(inst) == 64 * MIB


def test_disk_is_found_by_identity_not_by_index_after_a_hot_remove(node, hooks, sample):
    """Issue 20 (b): after disk 0 is hot-removed Ganeti renumbers the disks (the second
    disk is index 0 in the hook's environment) while the instance-disks links keep the
    names they were made with. Stand-in for the hot-remove: QEMU keeps both disks (a
    TCG guest without ACPI hotplug cannot drop one), the environment describes the
    second disk as index 0, and ``<inst>:0`` still points at the first disk's storage
    (the worst case: a link re-used for another disk). The hook must grow the disk with
    that UUID to its own storage's size."""
    root, _ = hooks
    first, second = DiskSpec(FileDisk(size_mib=64)), DiskSpec(FileDisk(size_mib=32))
    inst = node.start_instance("dg-ident.example.test", disks=[first, second],
                               variant="3.0")
    environ = grow_env(sample, inst, second, 48)  # DISK0_* now describe the second disk
    second.backend.grow(48)
    line = run_hook(root, environ)
    assert f": changed: disk 0: grown 32 MiB -> 48 MiB (device {second.kvm_id})" in line, line
    m = inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert (m["dev"], int(m["size"])) == ("vdb", 48 * MIB)
    assert int(inst.console.run("cat /sys/block/vda/size")) * 512 == 64 * MIB
    assert first.backend.path.stat().st_size == 64 * MIB
    assert second.backend.path.stat().st_size == 48 * MIB


def test_a_link_repointed_to_storage_qemu_does_not_hold_is_refused(node, hooks, sample):
    """The storage must be what QEMU holds open for the disk: a link QEMU opened, later
    pointed elsewhere, is not read as the disk's size (nor is another disk's index link,
    which QEMU holds too); the hook fails naming the paths and writes nothing."""
    root, _ = hooks
    first, second = DiskSpec(FileDisk(size_mib=64)), DiskSpec(FileDisk(size_mib=32))
    inst = node.start_instance("dg-moved.example.test", disks=[first, second],
                               variant="3.0")
    other = node.root / "elsewhere.img"
    with other.open("wb") as f:
        f.truncate(48 * MIB)
    link = node.disk_link(inst.name, 1)
    link.unlink()
    link.symlink_to(other)  # the second disk's link now names a file QEMU never opened
    line = run_hook(root, grow_env(sample, inst, second, 48))
    assert f": failed: disk 0: none of {link} is open in QEMU (pid {inst.pid})" in line, line
    assert int(inst.console.run("cat /sys/block/vdb/size")) * 512 == 32 * MIB
    assert second.backend.path.stat().st_size == 32 * MIB

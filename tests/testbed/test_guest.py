"""Real QEMU guests laid out like Ganeti's KVM node: boot, runtime files, disk grow, ACPI."""

import json
import time
from pathlib import Path

import pytest
from vmtestbed.disks import DiskSpec, FileDisk, LoopDisk
from vmtestbed.errors import QMPError
from vmtestbed.guest import DISK_MARKER_RE
from vmtestbed.iperf import measure
from vmtestbed.qmp import QMPClient

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

MIB = 1024 * 1024
BOOT_BUDGET_S = 10.0


def _cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def _guest_disk_bytes(inst, dev="vda"):
    return int(inst.console.run(f"cat /sys/block/{dev}/size")) * 512


def test_boot_and_ganeti_runtime_layout(boot_guest, kvmnode, netnode, record_property):
    inst = boot_guest(vcpus=2)
    record_property("boot_s", round(inst.boot_seconds, 2))
    print(f"boot to marker: {inst.boot_seconds:.2f} s")
    assert inst.boot_seconds <= BOOT_BUDGET_S

    hv = kvmnode.root / "kvm-hypervisor"
    assert int((hv / "pid" / inst.name).read_text()) == inst.pid
    for kind in ("qmp", "kvmd", "monitor", "serial"):
        assert (hv / "ctrl" / f"{inst.name}.{kind}").is_socket()
    assert (hv / "nic" / inst.name / "0").read_text() == inst.taps[0]
    link = kvmnode.root / "instance-disks" / f"{inst.name}:0"
    assert link.resolve() == inst.disks[0].backend.path.resolve()

    kvm_cmd, nics, _hvparams, disks = json.loads((hv / "conf" / f"{inst.name}.runtime").read_text())
    assert kvm_cmd[0] == "qemu-system-x86_64" and "-daemonize" in kvm_cmd
    assert nics[0]["hvinfo"]["id"] == inst.nics[0].kvm_id
    assert disks[0][0]["hvinfo"]["id"] == inst.disk_ids[0] == "disk-" + "-".join(
        inst.disks[0].uuid.split("-")[:3])
    assert disks[0][1] == str(link)

    argv = _cmdline(inst.pid)
    assert f"file={link},format=raw,if=none,aio=threads,id={inst.disk_ids[0]},auto-read-only=off" \
        in argv
    assert argv[-1] == "-S"
    assert any(a.startswith(f"type=tap,id={inst.nics[0].kvm_id},fd=") for a in argv)

    # the tap is on the node's bridge, and the guest reaches upstream through it
    assert f"master {netnode.bridge}" in netnode.exec(["ip", "link", "show", inst.taps[0]]).stdout
    inst.console.run(f"ping -c 1 -W 3 {netnode.upstream_ip}")

    # -smp 2 under MTTCG: one host thread per vCPU, both threads of the QEMU process
    threads = inst.vcpu_threads()
    assert len(set(threads)) == 2
    tasks = {int(p.name) for p in Path(f"/proc/{inst.pid}/task").iterdir()}
    assert set(threads) <= tasks


@pytest.mark.parametrize("variant", ["3.0", "3.1"])
def test_live_grow_file_disk_with_raw_block_resize(boot_guest, variant):
    inst = boot_guest(disks=[DiskSpec(FileDisk(size_mib=64))], variant=variant)
    assert inst.console.output.count("HP-DISK vda size=67108864") == 1
    assert _guest_disk_bytes(inst) == 64 * MIB

    # Raw QMP, the way a hook talks to QEMU: 3.0 names the drive "device",
    # 3.1 the blockdev "node-name". For a file QEMU grows the file itself.
    key = "device" if variant == "3.0" else "node-name"
    with QMPClient(inst.qmp_path) as qmp:
        qmp.execute("block_resize", {key: inst.disk_ids[0], "size": 96 * MIB})

    m = inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert (m["dev"], int(m["size"])) == ("vda", 96 * MIB)
    assert _guest_disk_bytes(inst) == 96 * MIB
    assert inst.disks[0].backend.path.stat().st_size == 96 * MIB


def test_live_grow_loop_device(boot_guest):
    disk = DiskSpec(LoopDisk(size_mib=64))
    inst = boot_guest(disks=[disk])
    loop = disk.backend
    with inst.qmp() as qmp:
        # A block device cannot grow past its end: QEMU refuses.
        with pytest.raises(QMPError):
            qmp.execute("block_resize", {"device": inst.disk_ids[0], "size": 80 * MIB})
        loop.grow(80)  # truncate the backing file + losetup -c, as lvextend would
        assert loop.size_bytes() == 80 * MIB
        qmp.execute("block_resize", {"device": inst.disk_ids[0], "size": 80 * MIB})
    m = inst.console.wait_for(DISK_MARKER_RE, timeout=15)
    assert int(m["size"]) == 80 * MIB
    assert _guest_disk_bytes(inst) == 80 * MIB


def test_stop_powers_off_over_acpi(boot_guest, kvmnode):
    inst = boot_guest()
    t0 = time.monotonic()
    inst.stop(timeout=20)
    assert time.monotonic() - t0 < 15, "guest ignored ACPI powerdown; QEMU was killed"
    assert "HP-POWEROFF" in inst.console.output
    assert not inst.alive()
    hv = kvmnode.root / "kvm-hypervisor"
    assert not (hv / "pid" / inst.name).exists()
    assert not (hv / "nic" / inst.name).exists()
    assert not (hv / "conf" / f"{inst.name}.runtime").exists()


def test_guest_and_fake_vm_throughput_to_upstream(boot_guest, netnode, record_property):
    fvm = netnode.add_fake_vm()
    inst = boot_guest()
    results = {
        "guest_up": measure(inst.check_output, netnode.upstream_ip, seconds=3),
        "guest_down": measure(inst.check_output, netnode.upstream_ip, seconds=3, reverse=True),
        "fakevm_up": measure(fvm.check_output, netnode.upstream_ip, seconds=3),
        "fakevm_down": measure(fvm.check_output, netnode.upstream_ip, seconds=3, reverse=True),
    }
    for key, mbit in results.items():
        record_property(f"{key}_mbit", round(mbit))
    print("  ".join(f"{k}={v:.0f} Mbit/s" for k, v in results.items()))
    # Under TCG a guest still moves well over 100 Mbit/s with TSO; a fake VM is ~10x that.
    assert results["guest_up"] > 50 and results["guest_down"] > 50
    assert results["fakevm_up"] > results["guest_up"]


def test_restart_is_a_new_qemu_with_the_same_disks(boot_guest, kvmnode):
    inst = boot_guest(disks=[DiskSpec(LoopDisk(size_mib=32))])
    inst.console.run("echo persisted | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null")
    old_pid, old_threads = inst.pid, inst.vcpu_threads()
    again = kvmnode.restart_instance(inst.name)
    assert again.pid != old_pid and not inst.alive()
    assert set(again.vcpu_threads()).isdisjoint(old_threads)
    hv = kvmnode.root / "kvm-hypervisor"
    assert (hv / "nic" / inst.name / "0").read_text() == again.taps[0]
    assert again.disk_ids == inst.disk_ids
    assert again.console.run("head -c 9 /dev/vda") == "persisted"

"""End to end: Ganeti drives an instance through its life; hookpack's recording action
shows where each hook ran, and the effects show on the nodes and in the guest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from vmtestbed.ganeti.lab import SHARED_STORAGE
from vmtestbed.ganeti.layout import instance_ip, instance_name

from tests.ganeti.scenario import (
    MASTER,
    guest_disk_bytes,
    guest_uptime,
    run_op,
    wait_guest,
)

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INST = instance_name(1)
IP = instance_ip(1)
N1, N2 = MASTER, "node2.example.test"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def lab(ganeti_lab):
    yield ganeti_lab
    ganeti_lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST, check=False)


@pytest.fixture(scope="module")
def state():
    """What one step leaves for the next (the steps run in file order)."""
    return {}


def _qemu_alive(lab, node) -> int | None:
    pid = lab.qemu_pid(INST, node)
    return pid if pid is not None and os.path.exists(f"/proc/{pid}") else None


def test_01_add_starts_qemu_on_the_primary(lab, ganeti_timings, state):
    records = run_op(lab, ganeti_timings, "add", "instance-add",
                     ["gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default",
                      "--disk", "0:size=64M", "-B", "memory=128", "--net", f"0:ip={IP}",
                      "--no-ip-check", "--no-name-check", "-H",
                      f"kvm:kernel_args=console=ttyS0 hp.ip={IP}/24 hp.hostname=inst1",
                      "-n", N2, INST],
                     instance=INST, primary=N2)
    assert lab.instance_info(INST, ["pnode", "status"]) == {"pnode": N2, "status": "running"}
    assert _qemu_alive(lab, N2) and lab.qemu_pid(INST, N1) is None
    wait_guest(lab, INST, IP)
    assert lab.guest_run(INST, "hostname").strip() == "inst1"
    assert guest_disk_bytes(lab, INST) == 64 * MIB
    post = next(r for r in records if r["node"] == N2 and r["phase"] == "post")
    assert post["env"]["GANETI_INSTANCE_NIC0_IP"] == IP


def test_02_grow_disk_grows_the_shared_file(lab, ganeti_timings, state):
    records = run_op(lab, ganeti_timings, "grow-disk", "disk-grow",
                     ["gnt-instance", "grow-disk", INST, "0", "32M"], instance=INST, primary=N2)
    assert lab.instance_info(INST, ["disk.size/0"])["disk.size/0"] in ("96M", "96")
    (disk,) = Path(SHARED_STORAGE, INST).glob("*.disk0")
    assert disk.stat().st_size == 96 * MIB
    pre = next(r for r in records if r["phase"] == "pre")
    assert (pre["env"]["GANETI_DISK"], pre["env"]["GANETI_AMOUNT"]) == ("0", "32")
    post = next(r for r in records if r["phase"] == "post")
    assert post["env"]["GANETI_POST_INSTANCE_DISK0_SIZE"] == "96"
    # Ganeti 3.0 does not tell QEMU; hookpack's disk-grow (on by default, so on in the
    # lab's config) resizes the running disk over QMP: the guest sees it without a reboot
    assert guest_disk_bytes(lab, INST) == 96 * MIB


def test_03_live_migrate_keeps_the_guest_running(lab, ganeti_timings, state):
    before = guest_uptime(lab, INST)
    old_pid = _qemu_alive(lab, N2)
    records = run_op(lab, ganeti_timings, "migrate", "instance-migrate",
                     ["gnt-instance", "migrate", "-f", INST],
                     instance=INST, primary=N2, target=N1)
    assert lab.instance_info(INST, ["pnode", "status"]) == {"pnode": N1, "status": "running"}
    assert _qemu_alive(lab, N1) and lab.qemu_pid(INST, N2) is None
    assert old_pid is not None and not os.path.exists(f"/proc/{old_pid}")
    assert guest_uptime(lab, INST) > before, "a live migration must not reboot the guest"
    assert lab.ping(N1, IP, timeout=10)
    assert all(r["env"]["GANETI_MIGRATE_LIVE"] == "True" for r in records)


def test_04_failover_restarts_the_guest_on_the_target(lab, ganeti_timings, state):
    before = guest_uptime(lab, INST)
    run_op(lab, ganeti_timings, "failover", "instance-failover",
           ["gnt-instance", "failover", "-f", INST], instance=INST, primary=N1, target=N2)
    assert lab.instance_info(INST, ["pnode", "status"]) == {"pnode": N2, "status": "running"}
    assert _qemu_alive(lab, N2) and lab.qemu_pid(INST, N1) is None
    wait_guest(lab, INST, IP)
    assert guest_uptime(lab, INST) < before, "failover stops and starts the guest"


def test_05_reboot_gives_a_new_qemu_and_the_grown_disk(lab, ganeti_timings, state):
    old_pid = _qemu_alive(lab, N2)
    run_op(lab, ganeti_timings, "reboot", "instance-reboot",
           ["gnt-instance", "reboot", INST], instance=INST, primary=N2)
    new_pid = _qemu_alive(lab, N2)
    assert new_pid and new_pid != old_pid, "KVM reboot restarts QEMU"
    wait_guest(lab, INST, IP)
    assert guest_disk_bytes(lab, INST) == 96 * MIB


def test_06_shutdown_powers_the_guest_off_over_acpi(lab, ganeti_timings, state):
    console = lab.console(INST)
    try:
        run_op(lab, ganeti_timings, "shutdown", "instance-stop",
               ["gnt-instance", "shutdown", INST], instance=INST, primary=N2)
        console.wait_for(r"HP-POWEROFF", timeout=10)
    finally:
        console.close()
    assert lab.instance_info(INST, ["status"])["status"] == "ADMIN_down"
    assert lab.qemu_pid(INST, N2) is None


def test_07_startup(lab, ganeti_timings, state):
    run_op(lab, ganeti_timings, "startup", "instance-start",
           ["gnt-instance", "startup", INST], instance=INST, primary=N2)
    assert _qemu_alive(lab, N2)
    wait_guest(lab, INST, IP)


def test_08_remove_deletes_the_disk(lab, ganeti_timings, state):
    run_op(lab, ganeti_timings, "remove", "instance-remove",
           ["gnt-instance", "remove", "-f", INST], instance=INST, primary=N2)
    names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
    assert INST not in names
    assert lab.qemu_pid(INST, N2) is None
    assert not Path(SHARED_STORAGE, INST).exists()

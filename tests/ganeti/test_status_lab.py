"""`hookpack status --json` on a real Ganeti node, checked against what Ganeti,
QEMU and the kernel say: after start (pinned), grow-disk (grown live) and on a node
that does not run the instance.

The lab's nodes share this machine's CPUs (2): a 1-vCPU instance is pinned to the top
CPU. Cross-checks are read from the host through the node's /run: QMP for the vCPU
thread ids and block sizes, /proc for affinities, the storage file for the size.
"""

from __future__ import annotations

import json
import os

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import VENV
from vmtestbed.ganeti.layout import instance_ip, instance_name

from hookpack.actions.pinning.threads import qmp_vcpu_tids
from hookpack.adapters import qmp as qmp_adapter

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INDEX = 9
INST = instance_name(INDEX)
NODE, OTHER = "node1.example.test", "node2.example.test"
HOOKPACK = str(VENV / "bin/hookpack")
MIB = 1 << 20


@pytest.fixture(scope="module")
def lab(ganeti_lab):
    """inst9 running on node1 with pinning enabled on every node."""
    with ganeti_lab.hookpack_config("[pinning]\nenabled = true\n"):
        try:
            ganeti_lab.add_instance(INDEX, node=NODE)
            ganeti_lab.wait_guest(INST, instance_ip(INDEX))
            yield ganeti_lab
        finally:
            ganeti_lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST,
                           check=False)


def status_json(lab, node: str) -> dict:
    run = lab.run_on(node, [HOOKPACK, "status", "--json", INST], timeout=60)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["schema"] == 1
    (inst,) = doc["instances"]
    assert inst["name"] == INST
    return inst


def qemu_block_sizes(lab) -> dict[str, int]:
    qmp = lab.node_root(NODE) / f"run/ganeti/kvm-hypervisor/ctrl/{INST}.qmp"
    with qmp_adapter.session(qmp, 10) as session:
        blocks = session.execute("query-block")
    # 3.0 names a disk's drive (device); 3.1's -blockdev leaves device empty and names
    # the block node instead
    return {b["device"] or b["inserted"]["node-name"]: b["inserted"]["image"]["virtual-size"]
            for b in blocks if b.get("inserted")}


def qemu_block_devices(lab) -> set[str]:
    qmp = lab.node_root(NODE) / f"run/ganeti/kvm-hypervisor/ctrl/{INST}.qmp"
    with qmp_adapter.session(qmp, 10) as session:
        return {b["device"] for b in session.execute("query-block") if b["device"]}


def test_status_matches_ganeti_qemu_and_the_kernel(lab):
    pid = lab.qemu_pid(INST, NODE)
    inst = status_json(lab, NODE)
    assert inst["running"] is True and inst["pid"] == pid

    pinning = inst["actions"]["pinning"]
    assert pinning["error"] is None, pinning
    qmp = lab.node_root(NODE) / f"run/ganeti/kvm-hypervisor/ctrl/{INST}.qmp"
    tids = qmp_vcpu_tids(qmp, 10)
    assert [v["thread_id"] for v in pinning["vcpus"]] == tids
    for vcpu in pinning["vcpus"]:
        assert vcpu["cpus"] == sorted(os.sched_getaffinity(vcpu["thread_id"]))
        assert vcpu["match"] is True, vcpu

    disks = inst["actions"]["disk-grow"]["disks"]
    (disk,) = disks
    size_mib = int(lab.instance_info(INST, ["disk.size/0"])["disk.size/0"])
    assert disk["storage_size"] == disk["qemu_size"] == size_mib * MIB, disk
    assert disk["match"] is True
    assert qemu_block_sizes(lab)[disk["qemu_id"]] == disk["qemu_size"]
    identity = ("its drive id (`-drive`; query-block device)" if disk["qemu_id"] in
                qemu_block_devices(lab) else "its block node name (`-blockdev`; query-block "
                "node-name, device empty)")
    compat.note(lab.version, "qemu.disk_identity", identity)

    # grow-disk: Ganeti grows the file, hookpack's post hook tells QEMU (3.0) or finds
    # that Ganeti did (3.1); status agrees
    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")
    (grown,) = status_json(lab, NODE)["actions"]["disk-grow"]["disks"]
    assert grown["storage_size"] == grown["qemu_size"] == (size_mib + 32) * MIB, grown
    assert qemu_block_sizes(lab)[grown["qemu_id"]] == grown["qemu_size"]

    runs = status_json(lab, NODE)["runs"]
    grow_runs = [r for r in runs if r["action"] == "disk-grow" and r["hpath"] == "disk-grow"]
    want = "changed" if lab.version == "3.0" else "nochange"
    assert grow_runs and grow_runs[0]["outcome"] == want, runs
    compat.note(lab.version, "action.status", "agrees with Ganeti, QEMU and the kernel "
                "(vCPU pins, disk sizes before and after grow-disk)")
    assert any(r["action"] == "pinning" and r["outcome"] in ("changed", "ok") for r in runs), runs


def test_status_elsewhere_shows_nothing_running(lab):
    """node2 never ran the instance nor a hook for it: one line, exit 1."""
    run = lab.run_on(OTHER, [HOOKPACK, "status", INST], timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"unknown instance {INST}" in run.stderr and run.stderr.count("\n") == 1, run.stderr

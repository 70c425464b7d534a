"""`hookpack status --json` against a real QEMU laid out like a Ganeti 3.0 KVM node
(vm-testbed's KvmNode; the guest kernel is not waited for: QMP and the vCPU threads are
there from QEMU's start, which is all status reads).

Pinning: after `hookpack pinning apply`, status names the same vCPU thread ids QEMU
gives over QMP (read here with vm-testbed's own QMP client) and the same affinities
os.sched_getaffinity and /proc report, the NUMA node(s) sysfs lists for those CPUs,
and "match" against what the pinning action wants. Disks: the storage file grown
behind QEMU's back shows as a mismatch; after `hookpack disk resize` (disk-grow's
block_resize) QEMU and storage match again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vmtestbed.disks import DiskSpec, FileDisk

from tests.helpers.status_schema import check_status

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]

MIB = 1 << 20


def _config(path: Path, kvmnode, run: Path) -> Path:
    path.write_text(
        f'[log]\nsyslog = false\n[node]\nfqdn = "node1.example.test"\n[paths]\n'
        f'kvm_dir = "{kvmnode.hv_dir}"\n'
        f'instance_disks_dir = "{kvmnode.root / "instance-disks"}"\n'
        f'run_dir = "{run}"\nstate_dir = "{run / "state"}"\nspool_dir = "{run / "spool"}"\n'
        f"[pinning]\nenabled = true\n")
    path.chmod(0o600)
    return path


def _hookpack(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hookpack", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)


def _status(config: Path, name: str) -> dict:
    proc = _hookpack(config, "status", name, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_status(doc)
    (inst,) = doc["instances"]
    assert inst["name"] == name
    return inst


def _numa_nodes(cpus: set[int]) -> list[int]:
    """NUMA nodes of ``cpus`` read from sysfs directly (no hookpack code)."""
    found = set()
    base = Path("/sys/devices/system/node")
    for entry in base.glob("node[0-9]*"):
        text = (entry / "cpulist").read_text().strip()
        members: set[int] = set()
        for part in filter(None, text.split(",")):
            lo, _, hi = part.partition("-")
            members |= set(range(int(lo), int(hi or lo) + 1))
        if members & cpus:
            found.add(int(entry.name[4:]))
    return sorted(found) if base.is_dir() else [0]


def _allowed(pid: int, tid: int) -> list[int]:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    text = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M).group(1)
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _qemu_size(inst, qemu_id: str) -> int:
    with inst.qmp() as q:
        blocks = q.execute("query-block")
    (block,) = [b for b in blocks if b.get("device") == qemu_id]
    return block["inserted"]["image"]["virtual-size"]


def test_status_pinning_and_disk_sizes_of_a_real_qemu(kvmnode, tmp_path):
    name = f"st{os.getpid()}.example.test"
    disk = DiskSpec(FileDisk(size_mib=64))
    inst = kvmnode.start_instance(name, vcpus=1, disks=[disk], nics=[], wait_boot=False)
    config = _config(tmp_path / "hookpack.toml", kvmnode, tmp_path / "run")

    # -- pinning ---------------------------------------------------------------------
    applied = _hookpack(config, "pinning", "apply", name)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    got = _status(config, name)
    assert got["running"] and got["pid"] == inst.pid
    pinning = got["actions"]["pinning"]
    assert pinning["error"] is None and pinning["cpu_mask"] == "all"
    tids = inst.vcpu_threads()  # QMP query-cpus-fast, vm-testbed's client
    assert [v["thread_id"] for v in pinning["vcpus"]] == tids
    for vcpu in pinning["vcpus"]:
        tid = vcpu["thread_id"]
        assert vcpu["error"] is None
        assert vcpu["cpus"] == sorted(os.sched_getaffinity(tid)) == _allowed(inst.pid, tid)
        assert vcpu["numa_nodes"] == _numa_nodes(set(vcpu["cpus"]))
        assert vcpu["match"] is True and vcpu["want"] == vcpu["cpus"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert pinning["mode"] == "pinned"
        assert all(len(v["cpus"]) == 1 for v in pinning["vcpus"])  # 1:1

    # a vCPU moved behind hookpack's back: status says it no longer matches
    tid = tids[0]
    everything = sorted(os.sched_getaffinity(0))
    if len(everything) >= 2:
        os.sched_setaffinity(tid, everything)
        moved = _status(config, name)["actions"]["pinning"]["vcpus"][0]
        assert moved["cpus"] == everything == sorted(os.sched_getaffinity(tid))
        assert moved["match"] is False and moved["want"] != everything

    # -- disks -----------------------------------------------------------------------
    qemu_id = inst.disk_ids[0]
    (d0,) = got["actions"]["disk-grow"]["disks"]
    assert d0["qemu_id"] == qemu_id and d0["match"] is True
    assert d0["qemu_size"] == d0["storage_size"] == 64 * MIB == _qemu_size(inst, qemu_id)
    storage = Path(os.path.realpath(kvmnode.disk_link(name, 0)))
    os.truncate(storage, 96 * MIB)  # the storage grew (what gnt-instance grow-disk does)
    (d0,) = _status(config, name)["actions"]["disk-grow"]["disks"]
    assert (d0["qemu_size"], d0["storage_size"], d0["match"]) == (64 * MIB, 96 * MIB, False)
    text = _hookpack(config, "status", name)
    assert text.returncode == 0 and "QEMU 64 MiB, storage 96 MiB MISMATCH" in text.stdout
    resized = _hookpack(config, "disk", "resize", name)
    assert resized.returncode == 0, resized.stdout + resized.stderr
    (d0,) = _status(config, name)["actions"]["disk-grow"]["disks"]
    assert (d0["qemu_size"], d0["storage_size"], d0["match"]) == (96 * MIB, 96 * MIB, True)
    assert _qemu_size(inst, qemu_id) == 96 * MIB

    # -- QEMU gone: its items say so, the command still succeeds ------------------------
    os.kill(inst.pid, 19)  # SIGSTOP: QMP accepts nothing, the socket stays
    try:
        stuck = _status(config, name)
    finally:
        os.kill(inst.pid, 18)  # SIGCONT
    assert "QEMU" in stuck["actions"]["pinning"]["error"]
    assert "QEMU" in stuck["actions"]["disk-grow"]["error"]
    assert stuck["actions"]["disk-grow"]["disks"][0]["storage_size"] == 96 * MIB

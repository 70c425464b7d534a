"""Modify, hotplug and move on the real Ganeti labs, with every action that cares on.

- A NIC hot-added to a running instance is shaped (its tap gets a mark and a class),
  a NIC hot-removed leaves nothing of hookpack's behind (instance-modify post).
- A disk hot-added reaches the guest, and grown, the guest sees the new size; after
  disk 0 is hot-removed the other disk is disk 0 to Ganeti, and growing it grows the
  right one (hookpack finds the storage by the disk's identity, not its index).
- A vCPU change (``-B vcpus``, full reboot) is pinned anew: 2 vCPUs do not fit 1:1 on
  this machine's 2 CPUs next to their emulator threads, so they float; back at 1 vCPU,
  it is pinned again.
- ``gnt-instance move`` (a ``file`` instance: its disk is copied to the target) runs
  the hooks where Ganeti's table says, and the instance is shaped on the target only.

Ganeti 3.0 hotplugs only when asked (``--hotplug``); 3.1 always tries and asks for
confirmation (``-f``). 3.0 leaves a grown disk's new size to hookpack's post hook; 3.1
resizes QEMU itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import LAB_CONFIG, VENV
from vmtestbed.ganeti.layout import instance_ip, instance_name

from tests.ganeti.scenario import MASTER, hookpack_marks, note_hook_table, run_op

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INST, IP = instance_name(13), instance_ip(13)
MOVED, MOVED_IP = instance_name(14), instance_ip(14)
HOT_IP = instance_ip(33)
N1, N2 = MASTER, "node2.example.test"
HOOKPACK = str(VENV / "bin" / "hookpack")
LOG = "/var/log/hookpack/modify-lab.log"
KVM_NIC = "run/ganeti/kvm-hypervisor/nic"
MIB = 1 << 20
CPUS = sorted(os.sched_getaffinity(0))
CONFIG = LAB_CONFIG.replace("[log]\n", f'[log]\nfile = "{LOG}"\n', 1) + """
[shaping]
enabled = true
uplink = "eth1"
egress_rate = "50mbit"
ingress_rate = "40mbit"

[pinning]
enabled = true
"""


@pytest.fixture(scope="module")
def lab(ganeti_lab):
    configs = [n.host_path("/etc/hookpack/hookpack.toml") for n in ganeti_lab.nodes]
    for path in configs:
        path.write_text(CONFIG)
    try:
        ganeti_lab.add_instance(13, node=N1, extra=["--tags", "hookpack:egress:20mbit"])
        ganeti_lab.wait_guest(INST, IP)
        yield ganeti_lab
    finally:
        for name in (INST, MOVED):
            ganeti_lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name,
                           check=False)
        for node in ganeti_lab.nodes:
            ganeti_lab.run_on(node, [HOOKPACK, "shaping", "clear", "--all", "--yes"])
        for path in configs:
            path.write_text(LAB_CONFIG)


def modify(lab, *args: str) -> str:
    """``gnt-instance modify`` hotplugging on both versions; returns its output."""
    hotplug = ["--hotplug"] if lab.version == "3.0" else []
    return lab.gnt("gnt-instance", "modify", "-f", *hotplug, *args, INST).stdout


def _taps(lab, node, instance) -> dict[int, str]:
    d = lab.node_root(node) / KVM_NIC / instance
    return {int(p.name): p.read_text().strip() for p in d.iterdir()} if d.is_dir() else {}


def _classes(lab, node) -> set[str]:
    out = lab.run_on(node, ["tc", "class", "show", "dev", "eth1"], check=True).stdout
    return set(re.findall(r"class htb (\S+) ", out))


def _shaped(lab, node, instance) -> dict[str, str]:
    """tap -> its uplink class, for each of ``instance``'s NICs hookpack marks on ``node``."""
    classes = _classes(lab, node)
    out = {}
    for tap, mark in hookpack_marks(lab, node).items():
        if mark["comment"].startswith(f"hookpack:{instance}:"):
            classid = f"4850:{mark['mark']:x}"
            assert classid in classes, (tap, mark, classes)
            out[tap] = classid
    return out


def _guest_disks(lab) -> dict[str, int]:
    out = lab.guest_run(INST, "for d in /sys/block/vd*; do echo ${d##*/} $(cat $d/size); done")
    return {name: int(sectors) * 512 for name, sectors in
            (line.split() for line in out.splitlines() if line.strip())}


def _lines(lab, node, action: str) -> list[str]:
    path = lab.node_file(node, LOG)
    text = path.read_text() if path.exists() else ""
    mark = f"hookpack {action}: {INST}: "
    return [line[line.index(mark):] for line in text.splitlines() if mark in line]


def test_a_hot_added_nic_is_shaped_and_a_hot_removed_one_leaves_nothing(lab):
    taps = _taps(lab, N1, INST)
    assert _shaped(lab, N1, INST).keys() == {taps[0]}
    out = modify(lab, "--net", f"add:ip={HOT_IP}")
    asked = "asked with `--hotplug`" if lab.version == "3.0" else "not asked (confirm with -f)"
    compat.note(lab.version, "hotplug.asked", f"{asked}: "
                + ("hotplug:done" if "hotplug:done" in out else "not hotplugged"))
    taps = _taps(lab, N1, INST)
    assert set(taps) == {0, 1}
    shaped = _shaped(lab, N1, INST)
    assert shaped.keys() == set(taps.values()), (shaped, taps)
    assert len(set(shaped.values())) == 2  # a class per NIC

    modify(lab, "--net", "1:remove")
    taps = _taps(lab, N1, INST)
    assert set(taps) == {0}
    assert _shaped(lab, N1, INST).keys() == {taps[0]}
    status = json.loads(lab.run_on(N1, [HOOKPACK, "status", "--json", INST],
                                   check=True).stdout)
    (inst,) = status["instances"]
    views = inst["actions"]["shaping"]["taps"]
    assert [v["tap"] for v in views] == [taps[0]], views
    assert all(c["match"] for v in views for c in v["classes"]) and views[0]["classes"], views
    compat.note(lab.version, "hotplug.nic_add", "the new tap gets its mark and class; "
                "hot-removed, both go")


def test_a_hot_added_disk_reaches_the_guest_and_grows_there(lab):
    assert _guest_disks(lab) == {"vda": 64 * MIB}
    modify(lab, "--disk", "add:size=32M")
    assert _guest_disks(lab) == {"vda": 64 * MIB, "vdb": 32 * MIB}
    lab.gnt("gnt-instance", "grow-disk", INST, "1", "32M")
    assert _guest_disks(lab) == {"vda": 64 * MIB, "vdb": 64 * MIB}
    line = _lines(lab, N1, "disk-grow")[-1]
    if lab.version == "3.0":
        assert "changed: disk 1: grown 32 MiB -> 64 MiB" in line, line
    else:
        assert "nochange: disk 1: QEMU already sees 64 MiB" in line, line
    compat.note(lab.version, "hotplug.disk_add", "vdb 32 MiB, then 64 MiB (hookpack: "
                + line.split(": ", 2)[2].split(" (")[0] + ")")


def test_after_disk_0_is_hot_removed_growing_disk_0_grows_the_other_one(lab):
    modify(lab, "--disk", "0:remove")
    assert _guest_disks(lab) == {"vdb": 64 * MIB}  # the guest keeps its name for it
    sizes = lab.instance_info(INST, ["disk.count", "disk.size/0"])
    assert sizes == {"disk.count": "1", "disk.size/0": "64"}
    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")
    assert _guest_disks(lab) == {"vdb": 96 * MIB}
    line = _lines(lab, N1, "disk-grow")[-1]
    if lab.version == "3.0":
        assert "changed: disk 0: grown 64 MiB -> 96 MiB" in line, line
    else:
        assert "nochange: disk 0: QEMU already sees 96 MiB" in line, line
    check = lab.run_on(N1, [HOOKPACK, "disk", "check"])
    assert check.returncode == 0 and "DRIFT" not in check.stdout, check.stdout
    compat.note(lab.version, "hotplug.disk_remove", "the right disk grows: vdb 64 -> 96 MiB "
                "(hookpack: " + line.split(": ", 2)[2].split(" (")[0] + ")")


def _vcpu_affinities(lab) -> list[str]:
    from hookpack.actions.pinning.threads import qmp_vcpu_tids

    pid = lab.qemu_pid(INST, N1)
    qmp = lab.node_root(N1) / f"run/ganeti/kvm-hypervisor/ctrl/{INST}.qmp"
    out = []
    for tid in qmp_vcpu_tids(qmp, 10):
        text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        out.append(re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M).group(1))
    return out


@pytest.mark.skipif(len(CPUS) != 2, reason="the expectations are for a 2-CPU machine")
def test_a_vcpu_change_is_pinned_anew(lab):
    assert _vcpu_affinities(lab) == [str(CPUS[-1])]
    all_cpus = f"{CPUS[0]}-{CPUS[-1]}"
    try:
        modify(lab, "-B", "vcpus=2")
        lab.gnt("gnt-instance", "reboot", "--type=full", INST)
        assert _vcpu_affinities(lab) == [all_cpus, all_cpus]
        assert "floating" in _lines(lab, N1, "pinning")[-1]
        compat.note(lab.version, "modify.vcpus", f"2 vCPUs float on CPUs {all_cpus} (they "
                    "do not fit 1:1 beside their emulator threads); back at 1, pinned again")
    finally:
        modify(lab, "-B", "vcpus=1")
        lab.gnt("gnt-instance", "reboot", "--type=full", INST)
    assert _vcpu_affinities(lab) == [str(CPUS[-1])]


def test_move_runs_the_hooks_where_the_table_says_and_shapes_on_the_target(
        lab, ganeti_timings):
    lab.add_instance(14, node=N1, template="file")
    assert _shaped(lab, N1, MOVED)
    argv = ["gnt-instance", "move", "-f", "-n", N2, MOVED]
    if lab.version == "3.1":
        _move_fails_on_3_1(lab, argv)
        return
    run_op(lab, ganeti_timings, f"move.{lab.version}", "instance-move", argv,
           instance=MOVED, primary=N1, target=N2)
    assert lab.instance_info(MOVED, ["pnode", "oper_state"]) == {"pnode": N2,
                                                                 "oper_state": "Y"}
    assert _shaped(lab, N2, MOVED).keys() == set(_taps(lab, N2, MOVED).values())
    assert _shaped(lab, N1, MOVED) == {}
    lab.wait_guest(MOVED, MOVED_IP)
    compat.note(lab.version, "move", "moved; shaped on the target, nothing left on the "
                "source")


def _move_fails_on_3_1(lab, argv: list[str]) -> None:
    """Debian 13's Ganeti 3.1.0~rc2 cannot copy a disk between its own nodes: the
    exporting socat wants the target's host name in the certificate the importing end
    shows, which is the cluster certificate (common name ganeti.example.com). The job
    fails after the instance was shut down; no post hook runs. hookpack's shaping of
    the stopped instance is left to the next reconcile (the timer's `apply --all`)."""
    lab.clear_records()
    r = lab.gnt(*argv, check=False)
    assert r.returncode != 0 and "Failed to transfer instance data" in r.stdout + r.stderr
    assert "commonName does not match" in r.stdout + r.stderr, r.stdout + r.stderr
    assert lab.instance_info(MOVED, ["pnode", "oper_state"]) == {"pnode": N1,
                                                                 "oper_state": "N"}
    phases = {(rec["phase"], rec["node"]) for n in lab.nodes for rec in lab.records(n)
              if rec["hpath"] == "instance-move"}
    assert phases == {("pre", N1), ("pre", N2)}, phases
    note_hook_table(lab, "instance-move", {"pre": {N1, N2}, "post": set()}, primary=N1,
                    target=N2)
    lab.run_on(N1, [HOOKPACK, "shaping", "apply", "--all"], check=True)
    assert _shaped(lab, N1, MOVED) == {}
    compat.note(lab.version, "move", "fails (3.1.0~rc2: the disk copy's TLS check wants the "
                "target's name in the cluster certificate); pre hooks only; the stopped "
                "instance's shaping goes at the next `apply --all`")

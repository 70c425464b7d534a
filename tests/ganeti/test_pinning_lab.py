"""Real Ganeti lab: after `gnt-instance migrate` (and failover) the instance is pinned
on the target.

Ganeti runs hookpack's entry on the target node in instance-migrate/post (role
"host"); the pinning action pins the new QEMU's vCPU thread 1:1. The lab's nodes
share this machine's CPUs (2 here): a 1-vCPU instance goes on the top CPU, its
emulator threads on the others. Checked from the host through the node's /run:
QMP query-cpus-fast for the vCPU thread ids, /proc for their affinities.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import LAB_CONFIG
from vmtestbed.ganeti.layout import instance_ip, instance_name

from hookpack.actions.pinning.threads import qmp_vcpu_tids

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INST = instance_name(7)
N1, N2 = "node1.example.test", "node2.example.test"
LOG = "/var/log/hookpack/pinning.log"
CPUS = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def lab(ganeti_lab):
    """The lab with pinning enabled on every node (config restored afterwards)."""
    configs = [n.host_path("/etc/hookpack/hookpack.toml") for n in ganeti_lab.nodes]
    config = LAB_CONFIG.replace("[log]\n", f'[log]\nfile = "{LOG}"\n', 1)
    for path in configs:
        path.write_text(config + "\n[pinning]\nenabled = true\n")
    try:
        yield ganeti_lab
    finally:
        ganeti_lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST,
                       check=False)
        for path in configs:
            path.write_text(LAB_CONFIG)


def allowed(pid: int, tid: int) -> str:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return re.search(r"^Cpus_allowed_list:\s*(\S+)", text, re.M).group(1)


def pinning_lines(lab, node: str) -> list[str]:
    path = lab.node(node).host_path(LOG)
    lines = path.read_text().splitlines() if path.exists() else []
    return [x for x in lines if "hookpack pinning:" in x]


def assert_pinned_on(lab, node: str) -> None:
    pid = lab.qemu_pid(INST, node)
    assert pid and os.path.exists(f"/proc/{pid}")
    qmp = lab.node_root(node) / f"run/ganeti/kvm-hypervisor/ctrl/{INST}.qmp"
    (vcpu,) = qmp_vcpu_tids(qmp, 10)
    assert allowed(pid, vcpu) == str(CPUS[-1])
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != vcpu]
    rest = ",".join(map(str, CPUS[:-1]))
    assert {allowed(pid, t) for t in others} == {rest}


@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 host CPUs")
def test_migrate_and_failover_pin_on_the_target(lab):
    lab.add_instance(7, node=N2)
    lab.wait_guest(INST, instance_ip(7))
    lab.gnt("gnt-instance", "migrate", "-f", INST)
    assert lab.instance_info(INST, ["pnode"])["pnode"] == N1
    assert_pinned_on(lab, N1)
    line = next(x for x in pinning_lines(lab, N1) if "instance-migrate/post" in x)
    assert f"hookpack pinning: {INST}: changed: 1 vCPU(s) 1:1" in line, line
    assert not any("instance-migrate" in x for x in pinning_lines(lab, N2))  # not the source
    # and back: pinned again on the new target
    lab.gnt("gnt-instance", "migrate", "-f", INST)
    assert lab.instance_info(INST, ["pnode"])["pnode"] == N2
    assert_pinned_on(lab, N2)
    # failover: QEMU restarted on the target, pinned there by instance-failover/post
    lab.gnt("gnt-instance", "failover", "-f", "--shutdown-timeout=30", INST)
    assert lab.instance_info(INST, ["pnode"])["pnode"] == N1
    assert_pinned_on(lab, N1)
    assert any("instance-failover/post" in x for x in pinning_lines(lab, N1))
    compat.note(lab.version, "action.pinning", "1 vCPU pinned 1:1 on the target after a "
                "live migration (both ways) and a failover")


"""The lab itself: a real two-node Ganeti cluster whose nodes are namespaces."""

from __future__ import annotations

import re

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.layout import CLUSTER_NAME

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]


def test_cluster_has_the_nodes(ganeti_lab):
    lab = ganeti_lab
    out = lab.gnt("gnt-node", "list", "--no-headers", "-o", "name,master_candidate").stdout
    assert sorted(line.split()[0] for line in out.splitlines()) == [n.name for n in lab.nodes]
    assert lab.gnt("gnt-cluster", "getmaster").stdout.strip() == lab.master.name
    info = lab.gnt("gnt-cluster", "info").stdout
    assert CLUSTER_NAME in info and "kvm" in info
    # major.minor: a Debian point release must not fail the table's check
    qemu = lab.gnt("/usr/bin/qemu-system-x86_64", "--version").stdout
    compat.note(lab.version, "qemu", re.search(r"version (\d+\.\d+)", qemu).group(1))
    python = lab.gnt("python3", "--version").stdout
    compat.note(lab.version, "python", re.search(r"Python (\d+\.\d+)", python).group(1))


def test_verify_reports_only_the_known_sysrq_error(ganeti_lab):
    r = ganeti_lab.gnt("gnt-cluster", "verify", check=False, timeout=300)
    out = r.stdout + r.stderr
    # verify really ran its node checks on every node (an empty or failed run has none
    # of these lines; feedback texts from Ganeti's lib/cmdlib/cluster/verify.py)
    assert f"* Gathering data ({len(ganeti_lab.nodes)} nodes)" in out, out
    assert "* Verifying node status" in out, out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    # this kernel has no /proc/sysrq-trigger (ganeti-lab.md)
    assert all("sysrq" in line for line in errors), errors
    assert r.returncode == (1 if errors else 0), out


@pytest.mark.parametrize("index", [1, 2])
def test_nodes_are_separate_hosts(ganeti_lab, index):
    lab = ganeti_lab
    node = lab.node(index)
    assert lab.run_on(node, ["hostname"], check=True).stdout.strip() == node.name
    # the ganeti daemons of this node, in its own /run
    assert lab.node_root(node).joinpath("run/ganeti/ganeti-noded.pid").exists()
    for other in lab.nodes:
        assert lab.ping(node, other.spec.ip, timeout=5)


def test_hookpack_is_installed_on_every_node(ganeti_lab):
    lab = ganeti_lab
    for node in lab.nodes:
        entry = lab.node_file(node, "/etc/ganeti/hooks/instance-migrate-pre.d/50-hookpack")
        assert entry.exists() and entry.stat().st_mode & 0o111
        assert lab.node_file(node, "/etc/hookpack/hookpack.toml").exists()
        r = lab.run_on(node, ["/opt/hookpack-lab/venv/bin/hookpack", "config", "check"])
        assert r.returncode == 0, r.stderr


def test_hookpack_doctor_passes_on_every_node(ganeti_lab):
    lab = ganeti_lab
    for node in lab.nodes:
        r = lab.run_on(node, ["/opt/hookpack-lab/venv/bin/hookpack", "doctor"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"PASS ganeti: Ganeti {lab.version}." in r.stdout
        package = r.stdout.split("PASS ganeti: Ganeti ", 1)[1].split()[0]
    compat.note(lab.version, "ganeti", package)
    compat.note(lab.version, "action.doctor", "passes on every node")


def test_hookpack_config_can_be_extended_for_a_block(ganeti_lab):
    lab = ganeti_lab
    hookpack = "/opt/hookpack-lab/venv/bin/hookpack"
    cfg = lab.node_file(2, "/etc/hookpack/hookpack.toml")
    before = cfg.read_text()
    with lab.hookpack_config("[hook]\ndeadline = 5.0\n", nodes=[2]):
        assert "deadline = 5.0" in cfg.read_text()
        assert lab.run_on(2, [hookpack, "config", "check"]).returncode == 0
    assert cfg.read_text() == before

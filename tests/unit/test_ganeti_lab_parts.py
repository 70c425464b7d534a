"""The Ganeti lab's pure parts, without root: /etc/hosts tagging, paths, the hooks table."""

from __future__ import annotations

import pytest
from vmtestbed.ganeti import hosts, osdef
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.layout import HOSTS_TAG, NodeSpec
from vmtestbed.ganeti.node import Node

from tests.ganeti.hooktable import expected_nodes

M, A, B = "node1", "node2", "node3"


def test_hosts_lines_are_tagged_and_removed_alone(tmp_path):
    f = tmp_path / "hosts"
    original = "127.0.0.1 localhost\n10.0.0.1 other.example.org  # vmtestbed-lab-not\n"
    f.write_text(original)
    hosts.add([("198.51.100.1", "node1.example.test")], f)
    hosts.add([("198.51.100.2", "node2.example.test")], f)  # replaces, never duplicates
    lines = f.read_text().splitlines()
    assert [line for line in lines if line.endswith(HOSTS_TAG)] == [
        f"198.51.100.2\tnode2.example.test node2\t{HOSTS_TAG}"]
    assert hosts.remove(f)
    assert f.read_text() == original
    assert not hosts.remove(f)


def test_node_paths_map_to_its_private_directories():
    node = Node(NodeSpec(2))
    root = node.spec.state_dir
    assert node.host_path("/etc/ganeti/hooks/x") == root / "etc-ganeti/hooks/x"
    assert node.host_path("/var/log/hookpack/record.jsonl") == \
        root / "var-log-hookpack/record.jsonl"
    assert node.host_path("/srv/ganeti/os") == root / "srv-ganeti/os"
    with pytest.raises(LabError, match="not in a private directory"):
        node.host_path("/etc/passwd")


def test_noop_os_definition(tmp_path):
    d = osdef.write(tmp_path)
    assert (d / "ganeti_api_version").read_text() == "20\n"
    assert (d / "variants.list").read_text() == "default\n"
    assert all((d / s).stat().st_mode & 0o111 for s in ("create", "import", "export",
                                                          "rename", "verify"))


@pytest.mark.parametrize(("hpath", "target", "pre", "post"), [
    ("instance-start", None, {M, A}, {M, A}),
    ("disk-grow", None, {M, A}, {M, A}),
    ("instance-migrate", B, {M, A, B}, {M, A, B}),
    ("instance-failover", B, {M, B}, {M, A, B}),  # post: also the old primary
    ("instance-remove", None, {M}, {M, A}),
])
def test_hooks_table(hpath, target, pre, post):
    assert expected_nodes(hpath, master=M, primary=A, target=target) == \
        {"pre": pre, "post": post}

"""sysfs parser: cpulist syntax and topology of synthetic hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookpack.actions.pinning.topology import format_cpulist, parse_cpulist, read_topology
from hookpack.errors import BadInput
from tests.helpers.fakehost import write_sysfs


@pytest.mark.parametrize(("text", "cpus"), [
    ("0-3,8-11\n", {0, 1, 2, 3, 8, 9, 10, 11}),
    ("5", {5}),
    ("", set()),
    ("\n", set()),
    ("0,2,4", {0, 2, 4}),
    ("0-7:2", {0, 2, 4, 6}),
    ("0-1, 4", {0, 1, 4}),
])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("bad", ["a", "3-1", "1-", "-1", "1-2-3", "0-3:0", "1;2"])
def test_parse_cpulist_rejects(bad):
    with pytest.raises(BadInput, match="cpulist"):
        parse_cpulist(bad)


@pytest.mark.parametrize("cpus", [[], [0], [0, 1, 2, 3, 8, 9, 10, 11], [1, 3, 5], [0, 1, 3]])
def test_format_round_trip(cpus):
    assert parse_cpulist(format_cpulist(cpus)) == set(cpus)
    assert format_cpulist([0, 1, 2, 3, 8, 9, 10, 11]) == "0-3,8-11"


def test_two_nodes_smt(tmp_path: Path):
    write_sysfs(tmp_path, nodes=2, cores_per_node=4, threads=2)
    topo = read_topology(tmp_path)
    assert topo.nodes == {0: (0, 1, 2, 3, 8, 9, 10, 11), 1: (4, 5, 6, 7, 12, 13, 14, 15)}
    assert topo.siblings[1] == (1, 9)
    assert topo.siblings[13] == (5, 13)
    assert topo.core_of(13) == 5
    assert topo.node_of(12) == 1
    assert topo.describe() == "2 NUMA node(s), 16 online CPU(s), 2 thread(s) per core"


def test_offline_cpus_left_out(tmp_path: Path):
    write_sysfs(tmp_path, nodes=2, cores_per_node=2, threads=2, offline={1, 6})
    topo = read_topology(tmp_path)
    assert 1 not in topo.online and 6 not in topo.online
    assert topo.nodes == {0: (0, 4, 5), 1: (2, 3, 7)}
    assert topo.siblings[5] == (5,)  # its sibling 1 is offline
    assert topo.siblings[2] == (2,)  # sibling 6 offline


def test_no_numa_directory_means_one_node(tmp_path: Path):
    write_sysfs(tmp_path, nodes=1, cores_per_node=3, threads=1, numa_dir=False)
    assert read_topology(tmp_path).nodes == {0: (0, 1, 2)}


def test_memory_only_node_ignored(tmp_path: Path):
    write_sysfs(tmp_path, nodes=2, cores_per_node=2, threads=1)
    mem = tmp_path / "devices/system/node/node2"
    mem.mkdir()
    (mem / "cpulist").write_text("\n")
    assert sorted(read_topology(tmp_path).nodes) == [0, 1]


def test_this_host():
    topo = read_topology(Path("/sys"))
    assert topo.online and sum(len(c) for c in topo.nodes.values()) == len(topo.online)


def test_missing_sysfs(tmp_path: Path):
    from hookpack.errors import ActionError

    with pytest.raises(ActionError, match="online CPUs"):
        read_topology(tmp_path)

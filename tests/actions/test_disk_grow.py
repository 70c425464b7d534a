"""disk-grow planning: block lookup on recorded QEMU answers, size rules, node files.

The query-block fixtures were recorded from QEMU 7.2 (Debian 12) started with Ganeti
3.0's ``-drive`` and 3.1's ``-blockdev`` disk options (a raw file as disk 0, a 32 MiB
loop device as disk 1); only the directory of the instance-disks links was rewritten to
/var/run/ganeti. The hook itself runs through the emulator on the installed entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hookpack.action import Paths
from hookpack.actions.disk_grow import node
from hookpack.actions.disk_grow.grow import grow_disk
from hookpack.actions.disk_grow.plan import MIB, Decision, find_block, mib, plan_resize
from hookpack.emulator import run_hooks
from hookpack.errors import ActionError
from hookpack.record import fields
from hookpack.result import Outcome
from tests.helpers.entries import actions_entry

FIXTURES = Path(__file__).parent / "fixtures"
ID0 = "disk-403d6c96-7c55-47ab"
ID1 = "disk-9a0b1c2d-3e4f-4a5b"
LINK0 = "/var/run/ganeti/instance-disks/inst1.example.test:0"
LINK1 = "/var/run/ganeti/instance-disks/inst1.example.test:1"


def blocks(variant: str) -> list[dict]:
    return json.loads((FIXTURES / f"query-block-ganeti-{variant}.json").read_text())


# -- find_block --------------------------------------------------------------------

def test_ganeti_30_disks_are_named_by_device():
    b = find_block(blocks("3.0"), ID0, LINK0)
    assert (b.key, b.name, b.size, b.file) == ("device", ID0, 64 * MIB, LINK0)
    assert b.resize_args(128 * MIB) == {"device": ID0, "size": 128 * MIB}
    assert find_block(blocks("3.0"), ID1, LINK1).size == 32 * MIB


def test_ganeti_31_blockdevs_are_named_by_node_name_with_an_empty_device():
    b = find_block(blocks("3.1"), ID1, LINK1)
    assert (b.key, b.name, b.size) == ("node-name", ID1, 32 * MIB)
    assert b.resize_args(64 * MIB) == {"node-name": ID1, "size": 64 * MIB}


@pytest.mark.parametrize(("variant", "key", "name"), [
    ("3.0", "device", ID0), ("3.1", "node-name", ID0)])
def test_unknown_id_falls_back_to_the_instance_disks_link(variant, key, name):
    b = find_block(blocks(variant), "disk-00000000-0000-0000", LINK0)
    assert (b.key, b.name) == (key, name)
    b = find_block(blocks(variant), None, LINK0)
    assert (b.key, b.name) == (key, name)


def test_qdev_path_is_the_last_fallback_and_nothing_found_is_none():
    data = blocks("3.1")
    for entry in data:
        entry["inserted"]["file"] = "/elsewhere"
        entry["inserted"]["node-name"] = "#block1" + entry["qdev"][-20:-16]
    b = find_block(data, ID1, LINK1)
    assert b.key == "node-name" and b.name.startswith("#block") and b.size == 32 * MIB
    assert find_block(data, "disk-00000000-0000-0000", "/nope") is None
    assert find_block([{"device": ID0}], ID0, LINK0) is None  # no medium inserted


# -- plan_resize -------------------------------------------------------------------

def test_grow_to_the_storage_size_when_qemu_is_behind():
    plan = plan_resize(64 * MIB, 128 * MIB, is_file=True, expected_mib=128)
    assert (plan.decision, plan.current, plan.target, plan.reason) == (
        Decision.RESIZE, 64 * MIB, 128 * MIB, "")


@pytest.mark.parametrize("is_file", [True, False])
def test_in_step_when_qemu_already_sees_the_storage_size(is_file):
    # repeat run, or Ganeti 3.1+ sent block_resize itself; even if Ganeti's number differs
    assert plan_resize(128 * MIB, 128 * MIB, is_file, 128).decision is Decision.IN_STEP
    assert plan_resize(128 * MIB, 128 * MIB, is_file, 96).decision is Decision.IN_STEP
    # QEMU counts whole sectors: a 1000-byte file is 1024 bytes to it
    assert plan_resize(1024, 1000, is_file, None).decision is Decision.IN_STEP


@pytest.mark.parametrize("is_file", [True, False])
def test_never_shrink(is_file):
    plan = plan_resize(128 * MIB, 64 * MIB, is_file, 64)
    assert plan.decision is Decision.REFUSE
    assert plan.reason == "storage is 64 MiB, smaller than QEMU's 128 MiB; never shrinking"


@pytest.mark.parametrize("is_file", [True, False])
def test_storage_smaller_than_ganeti_recorded_is_short_even_when_qemu_is_in_step(is_file):
    # a SAN LUN not yet rescanned here, an LV not yet extended: not "already sees"
    plan = plan_resize(64 * MIB, 64 * MIB, is_file, 128)
    assert plan.decision is Decision.SHORT
    assert plan.reason.startswith("storage is 64 MiB, smaller than the 128 MiB Ganeti "
                                  "recorded")
    assert plan_resize(64 * MIB, 96 * MIB, is_file, 128).decision is Decision.SHORT


def test_short_storage_fails_naming_the_device_and_both_sizes_and_writes_nothing():
    qmp = ReplayQmp("3.0")
    out = grow_disk(qmp, 0, ID0, LINK0, storage(96, is_file=False), 128)
    assert out.outcome is Outcome.FAILED
    assert out.message.startswith(f"disk 0 (device {ID0}): /x: storage is 96 MiB, smaller "
                                  "than the 128 MiB Ganeti recorded"), out.message
    assert out.message.endswith("QEMU left at 64 MiB")
    assert [c for c, _ in qmp.calls] == ["query-block"]


def test_file_guard_refuses_when_file_and_ganeti_disagree():
    plan = plan_resize(64 * MIB, 96 * MIB, is_file=True, expected_mib=80)
    assert plan.decision is Decision.REFUSE
    assert plan.reason.startswith("file is 96 MiB but Ganeti says 80 MiB; refusing block_resize")


def test_block_device_disagreement_uses_the_device_size_and_says_so():
    plan = plan_resize(64 * MIB, 132 * MIB, is_file=False, expected_mib=128)
    assert (plan.decision, plan.target) == (Decision.RESIZE, 132 * MIB)
    assert plan.reason == "device is 132 MiB, Ganeti says 128 MiB"


def test_manual_run_without_ganeti_size_trusts_the_storage():
    assert plan_resize(64 * MIB, 96 * MIB, True, None).decision is Decision.RESIZE


def test_mib_formatting():
    assert (mib(128 * MIB), mib(MIB + MIB // 2)) == ("128 MiB", "1.5 MiB")


# -- grow_disk over recorded answers (a replaying stand-in for QMP: the real QEMU
#    path is tests/actions/test_disk_grow_qemu.py) ------------------------------------

class ReplayQmp:
    """Answers query-block from a fixture; block_resize changes the recorded size."""

    def __init__(self, variant: str, refuse: bool = False) -> None:
        self.blocks = blocks(variant)
        self.calls: list[tuple[str, dict | None]] = []
        self.refuse = refuse

    def execute(self, command, arguments=None):
        self.calls.append((command, arguments))
        if command == "query-block":
            return json.loads(json.dumps(self.blocks))
        assert command == "block_resize"
        for b in self.blocks:
            if arguments.get("device") == b["device"] or \
                    arguments.get("node-name") == b["inserted"]["node-name"]:
                if not self.refuse:
                    b["inserted"]["image"]["virtual-size"] = arguments["size"]
                return {}
        raise AssertionError(f"unknown block {arguments}")


def storage(size_mib: int, is_file: bool = True):
    """A storage reader for grow_disk: the same storage whatever block node it is asked."""
    return lambda _block: node.Storage(Path("/x"), size_mib * MIB, is_file)


@pytest.mark.parametrize(("variant", "key"), [("3.0", "device"), ("3.1", "node-name")])
def test_grow_then_second_run_is_in_step(variant, key):
    qmp = ReplayQmp(variant)
    out = grow_disk(qmp, 0, ID0, LINK0, storage(128), 128)
    assert out.outcome is Outcome.CHANGED
    assert out.message == f"disk 0: grown 64 MiB -> 128 MiB ({key} {ID0})"
    assert ("block_resize", {key: ID0, "size": 128 * MIB}) in qmp.calls
    again = grow_disk(qmp, 0, ID0, LINK0, storage(128), 128)
    assert (again.outcome, again.message) == (Outcome.NOCHANGE,
                                              "disk 0: QEMU already sees 128 MiB")
    assert [c for c, _ in qmp.calls].count("block_resize") == 1


def test_guard_and_dry_run_never_send_block_resize():
    qmp = ReplayQmp("3.0")
    out = grow_disk(qmp, 0, ID0, LINK0, storage(96), 80)
    assert out.outcome is Outcome.FAILED and "refusing block_resize" in out.message
    out = grow_disk(qmp, 0, ID0, LINK0, storage(96), None, apply=False)
    assert out.message == f"disk 0: would grow 64 MiB -> 96 MiB (device {ID0})"
    assert [c for c, _ in qmp.calls] == ["query-block", "query-block"]


def test_read_back_mismatch_is_a_failure():
    out = grow_disk(ReplayQmp("3.1", refuse=True), 0, ID0, LINK0, storage(128), 128)
    assert out.outcome is Outcome.FAILED
    assert out.message == "disk 0: block_resize to 128 MiB accepted but QEMU reports 64 MiB"


# -- node files ----------------------------------------------------------------------

@pytest.fixture
def paths(tmp_path) -> Paths:
    p = {k: tmp_path / k for k in fields(Paths)}
    for d in p.values():
        d.mkdir()
    return Paths(**p)


def test_read_storage_of_a_file_and_of_a_missing_link(paths, tmp_path):
    f = tmp_path / "disk.img"
    f.touch()
    os.truncate(f, 96 * MIB)
    link = paths.instance_disks_dir / "i1:0"
    link.symlink_to(f)
    assert node.read_storage(link, paths.sysfs_root) == node.Storage(f, 96 * MIB, True)
    with pytest.raises(ActionError, match="missing"):
        node.read_storage(paths.instance_disks_dir / "i1:1", paths.sysfs_root)
    (paths.instance_disks_dir / "i1:2").symlink_to(tmp_path)
    with pytest.raises(ActionError, match="neither a file nor a block device"):
        node.read_storage(paths.instance_disks_dir / "i1:2", paths.sysfs_root)


def test_read_storage_of_a_block_device(paths):
    # /dev/zero is a character device: refused; a real block device is tested with a
    # loop device in test_disk_grow_qemu.py.
    link = paths.instance_disks_dir / "i1:0"
    link.symlink_to("/dev/zero")
    with pytest.raises(ActionError):
        node.read_storage(link, paths.sysfs_root)


def _fake_qemu(paths: Paths, name: str, pid: int, argv: list[str]) -> None:
    (paths.kvm_dir / "pid").mkdir(exist_ok=True)
    (paths.kvm_dir / "pid" / name).write_text(f"{pid}\n")
    proc = paths.proc_root / str(pid)
    proc.mkdir()
    (proc / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_qemu_pid_needs_a_live_process_named_after_the_instance(paths):
    _fake_qemu(paths, "a.example", 100, ["qemu-system-x86_64", "-name", "a.example", "-m", "1"])
    _fake_qemu(paths, "b.example", 101, ["bash"])  # pid reused by something else
    _fake_qemu(paths, "c.example", 102, [""])  # zombie
    (paths.kvm_dir / "pid" / "d.example").write_text("103")  # no process
    _fake_qemu(paths, "e.example", 104, ["qemu", "-name", "e.example,debug-threads=on"])
    assert node.qemu_pid(paths, "a.example") == 100
    assert [node.qemu_pid(paths, n) for n in ("b.example", "c.example", "d.example",
                                               "zz.example")] == [None] * 4
    assert list(node.running_instances(paths)) == [("a.example", 100), ("e.example", 104)]


def test_runtime_disks_as_ganeti_writes_them(paths):
    (paths.kvm_dir / "conf").mkdir()
    runtime = [["qemu"], [], {}, [
        [{"dev_type": "file", "uuid": "403d6c96-7c55-47ab-8e70-fb9c2cc6de95",
          "hvinfo": {"id": ID0, "driver": "virtio-blk-pci"}}, LINK0, None],
        [{"dev_type": "plain", "uuid": "9a0b1c2d-3e4f-4a5b-8e70-fb9c2cc6de95"}, LINK1, None]]]
    (paths.kvm_dir / "conf" / "i.runtime").write_text(json.dumps(runtime) + "\n")
    assert node.runtime_disks(paths, "i") == [
        node.RuntimeDisk(0, ID0, LINK0, "file"),
        node.RuntimeDisk(1, ID1, LINK1, "plain")]  # no hvinfo: id from the UUID
    (paths.kvm_dir / "conf" / "j.runtime").write_text('[["qemu"], [], {}]')
    with pytest.raises(ActionError, match="no disk list"):
        node.runtime_disks(paths, "j")
    with pytest.raises(ActionError, match="missing"):
        node.runtime_disks(paths, "k")


# -- the hook, installed and run as Ganeti runs it (no QEMU here) --------------------

def test_hook_on_the_primary_without_qemu_skips_in_one_line(hooks, sample, tmp_path):
    environ, node_name = sample("disk-grow-post-node1")
    root = hooks(f'[node]\nfqdn = "{node_name}"\n')  # default disk_grow: enabled
    [result] = actions_entry(run_hooks(root, "disk-grow", "post", environ))
    assert result.status == "success" and result.exit_code == 0
    [line] = result.output.splitlines()
    assert line.startswith("hookpack disk-grow: inst1.example.test: skipped: instance not "
                           "running on this node (no live QEMU) (disk-grow/post, 0 changes, ")


def test_hook_does_nothing_on_other_nodes(hooks, sample):
    environ, _ = sample("disk-grow-post-node1")
    root = hooks('[node]\nfqdn = "node2.example.test"\n')  # not the primary
    [result] = actions_entry(run_hooks(root, "disk-grow", "post", environ))
    assert (result.status, result.output) == ("success", "")

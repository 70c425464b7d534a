"""`hookpack status`: discovery, JSON schema, human output and error paths, on a
synthetic KVM runtime dir and /proc tree (no QEMU, no netns: the live checks are in
tests/status/). QMP sockets here are real unix sockets: a dead one (nobody listens)
and a silent one (accepts, never greets)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hookpack import status
from hookpack.actions.shaping import tc
from hookpack.actions.shaping.counters import Counters, counters
from hookpack.config import load_config
from hookpack.runstats import record_run
from tests.helpers.status_schema import check_status

INST = "web1.example.test"
UUID = "932df160-7a22-4067-9c40-3f2b5b0f8b1e"
QEMU_ID = "disk-932df160-7a22-4067"


def _config(write_config, extra: str = "") -> Path:
    return write_config(f"[pinning]\nenabled = true\n[shaping]\nenabled = true\n"
                        f'uplink = "lo"\n{extra}')


def _paths_of(config: Path) -> status.Paths:
    return status.Paths.from_config(load_config(config, required=True))


def _fake_qemu(tmp_path: Path, name: str = INST, disk_mib: int = 8) -> int:
    """A KVM runtime dir entry for ``name`` whose pid is a live /proc entry in a
    synthetic proc_root: pid file, runtime file with one file disk, its storage."""
    kvm = tmp_path / "kvm_dir"
    pid = 4242
    proc = tmp_path / "proc" / str(pid)
    proc.mkdir(parents=True)
    (proc / "cmdline").write_bytes(b"\0".join([b"qemu-system-x86_64", b"-name",
                                               name.encode(), b"-smp", b"1", b""]))
    for sub in ("pid", "conf", "ctrl"):
        (kvm / sub).mkdir(parents=True, exist_ok=True)
    (kvm / "pid" / name).write_text(f"{pid}\n")
    storage = tmp_path / "storage.img"
    with open(storage, "wb") as handle:
        handle.truncate(disk_mib << 20)
    disks = tmp_path / "instance_disks_dir"
    disks.mkdir(exist_ok=True)
    (disks / f"{name}:0").symlink_to(storage)
    disk = {"uuid": UUID, "dev_type": "file", "hvinfo": {"id": QEMU_ID}}
    (kvm / "conf" / f"{name}.runtime").write_text(json.dumps(
        [["qemu-system-x86_64"], [], {"cpu_mask": "all"}, [[disk, str(disks / f"{name}:0"),
                                                             None]]]))
    return pid


def _dead_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: ECONNREFUSED


def _run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hookpack", "status", *args, "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)


def test_counters_are_parsed_from_tca_stats2():
    basic = tc.attr(1, struct.pack("=QI", 123456789012, 4321) + b"\0" * 4)
    queue = tc.attr(3, struct.pack("=IIIII", 2, 3000, 17, 1, 99))
    obj = tc.TcObject(1, 0, 0, 0, "htb", raw_stats=basic + queue)
    assert counters(obj) == Counters(bytes=123456789012, packets=4321, drops=17,
                                     overlimits=99, requeues=1, backlog=3000, qlen=2)
    pkt64 = tc.attr(8, struct.pack("=Q", 1 << 40))
    assert counters(tc.TcObject(1, 0, 0, 0, "htb", raw_stats=basic + pkt64)).packets == 1 << 40
    assert counters(tc.TcObject(1, 0, 0, 0, "htb")) == Counters()


def test_kvm_dir_sources_and_records_make_the_instance_list(tmp_path, write_config):
    config = _config(write_config)
    paths = _paths_of(config)
    kvm = paths.kvm_dir
    (kvm / "pid").mkdir(parents=True)
    (kvm / "pid" / "a.example.test").write_text("1\n")
    (kvm / "ctrl").mkdir()
    (kvm / "ctrl" / "b.example.test.qmp").touch()
    (kvm / "ctrl" / "b.example.test.kvmd").touch()  # kvmd's socket: not a source
    (kvm / "nic" / "b.example.test").mkdir(parents=True)
    (kvm / "pid" / "bad name").write_text("1\n")  # not an instance name: ignored
    record_run(paths.state_dir, "dns", outcome="changed", ms=3, hpath="instance-add",
               phase="post", instance="elsewhere.example.test", message="added")
    assert status.kvm_instances(paths) == {"a.example.test": {"pid"},
                                           "b.example.test": {"qmp", "nic"}}
    assert set(status.select(paths, None)) == {"a.example.test", "b.example.test"}
    assert status.select(paths, "elsewhere.example.test") == {
        "elsewhere.example.test": {"records"}}
    with pytest.raises(status.BadInput, match="unknown instance nowhere.example.test"):
        status.select(paths, "nowhere.example.test")


def test_unknown_or_bad_instance_is_exit_1_with_one_line(tmp_path, write_config):
    config = _config(write_config)
    for name in ("nowhere.example.test", "../etc"):
        proc = _run_cli(config, name)
        assert proc.returncode == 1
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hookpack: "), proc.stderr


def test_empty_node_is_exit_0_and_valid_json(tmp_path, write_config):
    config = _config(write_config)
    proc = _run_cli(config, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_status(doc)
    assert doc["instances"] == []
    text = _run_cli(config)
    assert text.returncode == 0 and text.stdout == "no instance on this node\n"


def test_dead_qmp_socket_and_vanished_tap_are_item_errors(tmp_path, write_config):
    config = _config(write_config)
    config.write_text(config.read_text().replace(
        "[paths]\n", f'[paths]\nproc_root = "{tmp_path / "proc"}"\n', 1))
    paths = _paths_of(config)
    pid = _fake_qemu(tmp_path)
    _dead_socket(paths.kvm_dir / "ctrl" / f"{INST}.qmp")
    nic = paths.kvm_dir / "nic" / INST
    nic.mkdir(parents=True)
    (nic / "0").write_text("hpgone0\n")  # a tap that does not exist
    record_run(paths.state_dir, "shaping", outcome="changed", ms=12, hpath="instance-start",
               phase="post", instance=INST, message="tap3: egress 10mbit", now=1000.0)
    record_run(paths.state_dir, "pinning", outcome="nochange", ms=5, hpath="instance-start",
               phase="post", instance=INST, message="already pinned", now=2000.0)
    proc = _run_cli(config, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_status(doc)
    (inst,) = doc["instances"]
    assert inst["name"] == INST and inst["running"] and inst["pid"] == pid
    assert inst["sources"] == ["nic", "pid", "qmp", "runtime"]
    acts = inst["actions"]
    assert "QEMU" in acts["pinning"]["error"] and acts["pinning"]["vcpus"] == []
    assert "QEMU" in acts["disk-grow"]["error"]
    (disk,) = acts["disk-grow"]["disks"]
    assert disk["storage_size"] == 8 << 20 and disk["qemu_size"] is None
    assert disk["match"] is None and disk["qemu_id"] == QEMU_ID
    (tap,) = acts["shaping"]["taps"]
    assert tap["tap"] == "hpgone0" and "does not exist" in tap["error"]
    assert all(c["error"] and c["counters"] is None and c["match"] is None
               for c in tap["classes"])
    assert [r["action"] for r in inst["runs"]] == ["pinning", "shaping"]  # newest first
    assert inst["runs"][1]["message"] == "tap3: egress 10mbit"
    text = _run_cli(config, INST)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"{INST}: running, pid {pid}"
    assert all(line.startswith("  ") for line in lines[1:])  # one block per instance
    assert any(line.startswith("  pinning: QEMU: ") for line in lines)
    assert any(line.startswith("  disk-grow: QEMU: ") for line in lines)
    assert any("disk 0 (disk-932df160-7a22-4067): storage 8 MiB" in line for line in lines)
    assert "Traceback" not in text.stdout + text.stderr


def test_silent_qmp_socket_is_bounded(tmp_path, write_config, monkeypatch):
    """A socket that accepts and never greets (hung QEMU): an error, not a hang."""
    config = _config(write_config)
    config.write_text(config.read_text().replace(
        "[paths]\n", f'[paths]\nproc_root = "{tmp_path / "proc"}"\n', 1))
    paths = _paths_of(config)
    _fake_qemu(tmp_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.kvm_dir / "ctrl" / f"{INST}.qmp"))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setattr(status, "QMP_TIMEOUT", 0.5)
    try:
        (inst,) = status.collect(load_config(config, required=True))
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    doc = status.to_json([inst])
    check_status(doc)
    assert "QEMU" in inst.parts["pinning"].error
    assert "QEMU" in inst.parts["disk-grow"].error


def test_disabled_actions_show_as_disabled(tmp_path, write_config):
    config = write_config("[disk_grow]\nenabled = false\n")
    paths = _paths_of(config)
    (paths.kvm_dir / "pid").mkdir(parents=True)
    (paths.kvm_dir / "pid" / INST).write_text("1\n")
    proc = _run_cli(config, "--json")
    doc = json.loads(proc.stdout)
    check_status(doc)
    assert doc["instances"][0]["actions"] == {name: {"enabled": False} for name in
                                              ("shaping", "pinning", "disk-grow")}
    text = _run_cli(config).stdout.splitlines()
    assert text[0] == f"{INST}: not running here"
    assert "  shaping: disabled" in text and "  runs: none recorded" in text


def test_render_formats_one_block_per_instance():
    parts = {"pinning": status.Part({}, ["vcpu 0 tid 7: CPUs 1 (NUMA 0) ok",
                                         "vcpu 1 tid 8: CPUs 0 (NUMA 0) ok"]),
             "shaping": status.Part(error="shaping.uplink is not set"),
             "disk-grow": None}
    runs = [{"action": "pinning", "time": time.mktime((2026, 1, 2, 3, 4, 5, 0, 0, -1)),
             "hpath": "instance-start", "phase": "post", "outcome": "changed", "ms": 9,
             "message": "pinned"}]
    text = status.render([status.InstanceStatus("a.example.test", 10, ["pid"], parts, runs),
                          status.InstanceStatus("b.example.test", None, ["nic"], {}, [])])
    assert text == (
        "a.example.test: running, pid 10\n"
        "  pinning: vcpu 0 tid 7: CPUs 1 (NUMA 0) ok\n"
        "           vcpu 1 tid 8: CPUs 0 (NUMA 0) ok\n"
        "  shaping: shaping.uplink is not set\n"
        "  disk-grow: disabled\n"
        "  run 2026-01-02 03:04:05 pinning instance-start/post: changed (9 ms) pinned\n"
        "b.example.test: not running here\n"
        "  runs: none recorded\n")


def test_an_action_crashing_is_an_error_field(tmp_path, write_config, monkeypatch):
    from hookpack.actions.pinning import action as pinning

    def boom(cfg, paths, names):
        raise RuntimeError("bug")
    monkeypatch.setattr(pinning, "status", boom)
    config = _config(write_config)
    paths = _paths_of(config)
    (paths.kvm_dir / "pid").mkdir(parents=True)
    (paths.kvm_dir / "pid" / INST).write_text("1\n")
    (inst,) = status.collect(load_config(config, required=True))
    assert inst.parts["pinning"].error == "internal error: RuntimeError: bug"

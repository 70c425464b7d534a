"""disk-grow on the real Ganeti labs: grow-disk on a running instance, the guest sees
the new size without a reboot; the master does nothing; drift is refused and shown.

Ganeti 3.0 grows the storage and leaves QEMU as it was: hookpack's post hook resizes
it. Ganeti 3.1 grows the storage to the size it records (a file is truncated to it) and
then does ``block_resize`` itself: hookpack finds QEMU in step and writes nothing.

The instance is `sharedfile` (the lab has no LVM/DRBD), so there is no secondary node:
"the secondary does nothing" is covered by the role rule (the dispatcher runs the action
on the primary only) and the unit test on the recorded node2 environment, not here.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.lab import SHARED_STORAGE
from vmtestbed.ganeti.layout import instance_ip, instance_name

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INDEX = 5
INST = instance_name(INDEX)
IP = instance_ip(INDEX)
MASTER, PRIMARY = "node1.example.test", "node2.example.test"
MIB = 1 << 20
LOG = "/var/log/hookpack/disk-grow-lab.log"
CONFIG = "/etc/hookpack/hookpack.toml"


@pytest.fixture(scope="module")
def lab(ganeti_lab):
    """The lab with inst5 running on node2; hookpack's lines also go to a log file on
    every node, and a failed post action exits 1 (so Ganeti puts it in the job log)."""
    originals = {}
    for node in ganeti_lab.nodes:
        path = ganeti_lab.node_file(node, CONFIG)
        originals[path] = path.read_text()
        text = originals[path].replace("[log]\n", f'[log]\nfile = "{LOG}"\n', 1)
        path.write_text(text + "\n[hook]\npost_failure_exit_code = 1\n")
        ganeti_lab.node_file(node, LOG).unlink(missing_ok=True)
    try:
        ganeti_lab.add_instance(INDEX, node=PRIMARY)
        ganeti_lab.wait_guest(INST, IP)
        yield ganeti_lab
    finally:
        ganeti_lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST,
                       check=False)
        for path, text in originals.items():
            path.write_text(text)


def _lines(lab, node) -> list[str]:
    try:
        text = lab.node_file(node, LOG).read_text()
    except FileNotFoundError:
        return []
    # the log file prefixes each line with a timestamp
    mark = "hookpack disk-grow: "
    return [line[line.index(mark):] for line in text.splitlines() if mark in line]


def _last_job_log(lab) -> str:
    ids = lab.gnt("gnt-job", "list", "--no-headers", "-o", "id").stdout.split()
    return lab.gnt("gnt-job", "info", max(ids, key=int)).stdout


def _disk_file() -> Path:
    (disk,) = Path(SHARED_STORAGE, INST).glob("*.disk0")
    return disk


def test_grow_disk_reaches_the_running_guest_without_a_reboot(lab, ganeti_timings):
    assert lab.guest_disk_bytes(INST) == 64 * MIB
    uptime = lab.guest_uptime(INST)
    t0 = time.monotonic()
    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")
    done = time.monotonic()
    seen = lab.guest_disk_bytes(INST)
    seen_after = time.monotonic() - done
    ganeti_timings["disk-grow.job"] = round(done - t0, 1)
    ganeti_timings["disk-grow.guest_sees_after_job"] = round(seen_after, 2)
    assert seen == 96 * MIB, "the guest did not see the grown disk"
    assert seen_after <= 2.0, f"the guest saw it {seen_after:.2f} s after the job"
    assert lab.guest_uptime(INST) > uptime, "no reboot"

    [line] = _lines(lab, PRIMARY)
    assert re.fullmatch(rf"hookpack disk-grow: {re.escape(INST)}: {_grown(lab, 64, 96)} "
                        r"\(disk-grow/post, [01] changes?, \d+ ms\)", line), line
    assert _lines(lab, MASTER) == []  # the master runs the hook but the action does nothing
    # Ganeti puts a post hook's output in the job log only when the hook exits
    # non-zero (lib/hooksmaster.py RunPhase): a success stays out of it.
    assert "hookpack disk-grow" not in _last_job_log(lab)

    message = line.split(": ", 2)[2].split(" (")[0]
    if lab.version == "3.0":
        compat.note(lab.version, "disk-grow.qemu", "hookpack's post hook (`block_resize`)")
        compat.note(lab.version, "disk-grow.hookpack", f"resizes QEMU: `{message}`")
    else:
        compat.note(lab.version, "disk-grow.qemu", "Ganeti itself, before the post hook")
        compat.note(lab.version, "disk-grow.hookpack", f"finds QEMU in step, writes "
                    f"nothing: `{message}`")

    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")  # again: both grow by 32 MiB
    assert lab.guest_disk_bytes(INST) == 128 * MIB
    assert re.search(_grown(lab, 96, 128), _lines(lab, PRIMARY)[-1])


def _grown(lab, before: int, after: int) -> str:
    """The post hook's message (a regex) when Ganeti grew the disk from ``before`` to
    ``after`` MiB: 3.0 leaves QEMU behind and hookpack resizes it; 3.1 resizes it first."""
    if lab.version == "3.0":
        return (rf"changed: disk 0: grown {before} MiB -> {after} MiB "
                r"\(device disk-[0-9a-f-]+\)")
    return rf"nochange: disk 0: QEMU already sees {after} MiB"


def test_drift_is_refused_and_shown_in_the_job_log(lab):
    # Someone grew the file behind Ganeti's back (to 160 MiB, Ganeti says 128 MiB).
    disk = _disk_file()
    os.truncate(disk, 160 * MIB)
    tail = os.urandom(4096)
    with disk.open("r+b") as f:
        f.seek(160 * MIB - len(tail))
        f.write(tail)
    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")
    with disk.open("rb") as f:
        f.seek(160 * MIB - len(tail))
        assert f.read(len(tail)) == tail
    after = disk.stat().st_size // MIB
    compat.note(lab.version, "disk-grow.storage", f"file 160 MiB behind Ganeti's 128, "
                f"grown by 32: file {after} MiB ("
                + ("its own size + 32; hookpack refuses the drift" if after == 192 else
                   "Ganeti's size + 32") + ")")
    if lab.version == "3.1":
        # 3.1 sets the file to the size it records (160 MiB), resizes QEMU itself, and
        # hookpack finds all three in step. Drift made after the job is refused below.
        assert disk.stat().st_size == 160 * MIB
        assert lab.guest_disk_bytes(INST) == 160 * MIB
        assert "nochange: disk 0: QEMU already sees 160 MiB" in _lines(lab, PRIMARY)[-1]
        os.truncate(disk, 192 * MIB)  # behind Ganeti's back again, after its job
        _check_and_fix_by_hand(lab, qemu=160, storage=192)
        return
    # 3.0 grows the file by 32 MiB more: the file (192 MiB) and Ganeti (160 MiB)
    # disagree, and the guard refuses.
    assert disk.stat().st_size == 192 * MIB
    assert lab.guest_disk_bytes(INST) == 128 * MIB
    line = _lines(lab, PRIMARY)[-1]
    assert line.startswith(f"hookpack disk-grow: {INST}: failed: disk 0: file is 192 MiB but "
                           "Ganeti says 160 MiB; refusing block_resize"), line
    log = _last_job_log(lab)
    shown = [x for x in log.splitlines() if "hookpack disk-grow: " + INST + ": failed" in x]
    print("job log:", *shown, sep="\n  ")
    # Ganeti 3.0: "WARNING: On <node UUID> script <hpath>-post.d/50-hookpack failed, output: ..."
    assert shown and "script" in shown[0] and "failed, output:" in shown[0], log

    _check_and_fix_by_hand(lab, qemu=128, storage=192)


def _check_and_fix_by_hand(lab, *, qemu: int, storage: int) -> None:
    """The operator checks, then tells QEMU the file's own size by hand, on the primary."""
    hookpack = "/opt/hookpack-lab/venv/bin/hookpack"
    check = lab.run_on(PRIMARY, [hookpack, "disk", "check"])
    assert check.returncode == 1, check.stdout
    assert f"QEMU {qemu} MiB, storage {storage} MiB: DRIFT" in check.stdout, check.stdout
    fix = lab.run_on(PRIMARY, [hookpack, "disk", "resize", INST])
    assert fix.returncode == 0, fix.stdout
    assert f": grown {qemu} MiB -> {storage} MiB" in fix.stdout, fix.stdout
    assert lab.guest_disk_bytes(INST) == storage * MIB

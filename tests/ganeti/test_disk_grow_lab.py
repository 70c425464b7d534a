"""disk-grow on the real Ganeti 3.0 lab: grow-disk on a running instance, the guest sees
the new size without a reboot; the master does nothing; drift is refused and shown.

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
    assert re.fullmatch(rf"hookpack disk-grow: {re.escape(INST)}: changed: disk 0: grown "
                        r"64 MiB -> 96 MiB \(device disk-[0-9a-f-]+\) \(disk-grow/post, 1 "
                        r"change, \d+ ms\)", line), line
    assert _lines(lab, MASTER) == []  # the master runs the hook but the action does nothing
    # Ganeti 3.0 puts a post hook's output in the job log only when the hook exits
    # non-zero (lib/hooksmaster.py RunPhase): a success stays out of it.
    assert "hookpack disk-grow" not in _last_job_log(lab)

    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")  # again: both grow by 32 MiB
    assert lab.guest_disk_bytes(INST) == 128 * MIB
    assert ": grown 96 MiB -> 128 MiB" in _lines(lab, PRIMARY)[-1]


def test_drift_is_refused_and_shown_in_the_job_log(lab):
    # Someone grew the file behind Ganeti's back: Ganeti then grows it by 32 MiB more,
    # and the file (192 MiB) and Ganeti (160 MiB) disagree: the guard refuses.
    disk = _disk_file()
    os.truncate(disk, 160 * MIB)
    tail = os.urandom(4096)
    with disk.open("r+b") as f:
        f.seek(160 * MIB - len(tail))
        f.write(tail)
    lab.gnt("gnt-instance", "grow-disk", INST, "0", "32M")
    assert disk.stat().st_size == 192 * MIB
    with disk.open("rb") as f:
        f.seek(160 * MIB - len(tail))
        assert f.read(len(tail)) == tail
    assert lab.guest_disk_bytes(INST) == 128 * MIB
    line = _lines(lab, PRIMARY)[-1]
    assert line.startswith(f"hookpack disk-grow: {INST}: failed: disk 0: file is 192 MiB but "
                           "Ganeti says 160 MiB; refusing block_resize"), line
    log = _last_job_log(lab)
    shown = [x for x in log.splitlines() if "hookpack disk-grow: " + INST + ": failed" in x]
    print("job log:", *shown, sep="\n  ")
    # Ganeti 3.0: "WARNING: On <node UUID> script <hpath>-post.d/50-hookpack failed, output: ..."
    assert shown and "script" in shown[0] and "failed, output:" in shown[0], log

    # The operator checks, then tells QEMU the file's own size by hand, on the primary.
    hookpack = "/opt/hookpack-lab/venv/bin/hookpack"
    check = lab.run_on(PRIMARY, [hookpack, "disk", "check"])
    assert check.returncode == 1 and "QEMU 128 MiB, storage 192 MiB: DRIFT" in check.stdout
    fix = lab.run_on(PRIMARY, [hookpack, "disk", "resize", INST])
    assert fix.returncode == 0 and ": grown 128 MiB -> 192 MiB" in fix.stdout, fix.stdout
    assert lab.guest_disk_bytes(INST) == 192 * MIB

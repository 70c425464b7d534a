"""Faults with the real parts, through the installed entry in the node's netns:
a real QEMU killed while hookpack waits on its QMP socket, and a tap deleted in the
middle of a shaping apply (pinned to the apply's steps by hookpack/debugpoints.py).

Each must end within the hook deadline with one clear line, exit 0 (post phase), and
leave a node the next run brings in step with no orphaned kernel object.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import popns, pushns

from tests.reliability.relnode import RelNode

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

DEADLINE = 15.0  # the default [hook] deadline the node's config keeps
STARTUP = 2.0  # interpreter start on a loaded 2-core machine, on top of the deadline
NAME = "fr0.example.test"
WAIT_BEFORE_KILL = 2.0  # s: the entry starts (~0.3-1 s here) and retries QMP until 15 s


def start_entry(hooks: Path, node: RelNode, hpath: str, environ: dict[str, str],
                debug: dict[str, str] | None = None) -> subprocess.Popen:
    """The installed post entry, run as Ganeti runs it (GANETI_* and PATH only), plus the
    debug-point variables when given (Ganeti never passes them)."""
    env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
    env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", **(debug or {}))
    return subprocess.Popen(["ip", "netns", "exec", node.net.ns,
                             str(hooks / f"{hpath}-post.d" / "50-hookpack")], env=env, cwd="/",
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, started: float) -> list[str]:
    out, _ = proc.communicate(timeout=DEADLINE + 30)
    elapsed = time.monotonic() - started
    print(f"{elapsed:.2f} s, exit {proc.returncode}: {out.strip()}")
    # the bounds of test_faults.py: the deadline on the hook's own clock (the actions'
    # times in their lines), deadline + STARTUP for the whole process
    spent = sum(int(m.group(1)) for m in re.finditer(r", (\d+) ms\)$", out, re.MULTILINE))
    assert spent <= DEADLINE * 1000, f"actions took {spent} ms of {DEADLINE} s"
    assert elapsed < DEADLINE + STARTUP, f"{elapsed:.2f} s with a {DEADLINE} s deadline"
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "internal error" not in out, out
    return out.splitlines()


def the_line(lines: list[str], action: str) -> str:
    mine = [line for line in lines if line.startswith(f"hookpack {action}: ")]
    assert len(mine) == 1, lines
    return mine[0]


def test_real_qemu_killed_while_hookpack_waits(relnode, install_hooks):
    """grow-disk post: QEMU is stopped (SIGSTOP), so hookpack gets no QMP greeting and
    keeps retrying (a busy socket, until its deadline); QEMU is then killed (SIGKILL)
    under it. A clean skip, and the next run (QEMU back) grows the disk."""
    node = relnode
    hooks = install_hooks(node.config)
    inst = node.start(NAME)
    node.grow_disk(NAME)
    os.kill(inst.qemu.pid, signal.SIGSTOP)
    hpath, environ = node.env("grow-disk", NAME)
    started = time.monotonic()
    proc = start_entry(hooks, node, hpath, environ)
    time.sleep(WAIT_BEFORE_KILL)  # the hook is up and in its QMP wait (QEMU is stopped)
    waiting = proc.poll() is None
    os.kill(inst.qemu.pid, signal.SIGKILL)
    inst.qemu.wait()
    line = the_line(finish(proc, started), "disk-grow")
    assert waiting, "the hook ended before QEMU was killed"
    # a stopped QEMU is "busy" (the hook retries until its deadline); only its death
    # turns that into this skip
    assert f"hookpack disk-grow: {NAME}: skipped: disk 0: no QEMU to talk to" in line, line
    # Ganeti restarts the instance; the next grow-disk run tells the new QEMU
    inst.qemu = None
    node.stop(NAME)
    node.start(NAME)
    node.grow_disk(NAME)
    again = the_line(finish(start_entry(hooks, node, hpath, environ), time.monotonic()),
                     "disk-grow")
    assert ": changed: disk 0: grown 64 MiB -> 128 MiB" in again, again


@pytest.mark.parametrize("point,shaped", [("shaping:stream", False), ("shaping:start", False),
                                          ("shaping:deleted", False),
                                          ("shaping:rules-done", True)])
def test_tap_deleted_in_the_middle_of_a_shaping_apply(point, shaped, relnode, install_hooks,
                                                      tmp_path):
    """instance-start post with two NICs; the second tap is deleted while the hook sits
    at ``point`` of its apply. On a fresh node the hook reconciles the whole node (no
    uplink qdisc yet), sending its creations while it plans: "stream" (the creations
    are about to go), "start" (after observe and plan), "deleted" (the marks' nf_tables
    transaction is next: it names the vanished tap). On a node already shaped (``shaped``)
    the hook is the instance's alone and keeps its order: "rules-done" (the marks are
    written, the tap's uplink class, leaf and to-VM qdisc are still to be made). One
    clean line; then Ganeti's unplug (nic file gone) and the next hook leave exactly
    what a full reconcile computes: no class, mark chain or qdisc of the deleted tap left
    over."""
    node = relnode
    hooks = install_hooks(node.config)
    inst = node.start(NAME, nics=2)
    victim = inst.taps[1]
    if shaped:  # the node's base in place, the instance not shaped yet
        for args in (("shaping", "apply", "--all"), ("shaping", "clear", NAME)):
            done = node.cli(*args)
            assert done.returncode == 0, done.stderr
    trace = tmp_path / "trace"
    hpath, environ = node.env("start", NAME)
    started = time.monotonic()
    pushns(node.net.ns)  # a netlink socket in the node's netns, opened before the hook
    try:
        ipr = IPRoute()
    finally:
        popns()
    proc = start_entry(hooks, node, hpath, environ,
                       {"HOOKPACK_DEBUG_APPLY_TRACE": str(trace),
                        "HOOKPACK_DEBUG_APPLY_PAUSE_MS": "300"})
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up and proc.poll() is None:
        if point in (trace.read_text().split() if trace.exists() else []):
            break
        time.sleep(0.01)
    ipr.link("del", ifname=victim)  # one netlink message: no process start to wait for
    # the tap went while the hook still sat at ``point`` (its pause is 300 ms)
    assert trace.read_text().split()[-1] == point, trace.read_text()
    ipr.close()
    line = the_line(finish(proc, started), "shaping")
    points = trace.read_text().split()[1::2]
    print(points)
    assert point in points and "shaping:end" in points, points
    assert victim in line, line  # the line names the tap it could not shape
    assert ("reconciled the whole node" in line) is not shaped, line
    assert ("shaping:stream" in points) is not shaped, points
    # Ganeti's side of the NIC going away, then the next hook (hot-unplug: modify post)
    del inst.taps[1]
    node.net.nic(NAME, 1, None)
    hpath, environ = node.env("modify", NAME, nics=1)
    the_line(finish(start_entry(hooks, node, hpath, environ), time.monotonic()), "shaping")
    node.check_shaping(node.probe())
    assert node.leftovers() == []
    again = the_line(finish(start_entry(hooks, node, hpath, environ), time.monotonic()),
                     "shaping")
    assert ": nochange: " in again, again

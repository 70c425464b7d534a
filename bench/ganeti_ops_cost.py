"""Benchmark: what hookpack's hooks add to real Ganeti operations (issue 21).

In the real 2-node Ganeti lab (vm-testbed/vmtestbed/ganeti), one running instance
(sharedfile) goes through reboot, migrate, grow-disk, shutdown and startup, with
hookpack's hook entries installed on every node and without them (`hookpack hooks
uninstall`), the two modes taking turns round by round (the order swapped each round,
so load drifts and the migrate direction hit both alike). Timed: the whole `gnt-instance`
command on the master, as an operator sees it. The guest is waited for (untimed) after
every operation that boots it, so a shutdown always finds a booted guest. Printed per
operation: the median without and with, the ms added and the %.

hookpack's config for the "with" runs: shaping, pinning, disk-grow and policy on, global
hooks on (no global scripts): the production shape, not the lab's record action.
Goal (issue 21): at most 100 ms added to any operation.

Beside the operation's time, the time Ganeti spent running hooks: two stopwatch scripts
(`00-hpbench-a`, `zz-hpbench-z`) sit first and last in every hooks directory of every
node, in both modes, and write when each node's run of that directory began and ended.
Ganeti runs a phase's hooks on all its nodes at once, so a phase takes the longest of
its nodes; "in hooks" is the sum over the operation's phases. What an operation gains
beyond that is not hook run time (e.g. the migration stream through the shaped uplink).

Run as root on a machine where the lab can run: python3 bench/ganeti_ops_cost.py [--rounds N]
(uses a lab that is up, else brings one up and down again).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "vm-testbed")]

from vmtestbed.ganeti import hookpack_install  # noqa: E402
from vmtestbed.ganeti.lab import Lab  # noqa: E402
from vmtestbed.ganeti.layout import instance_ip, instance_name  # noqa: E402
from vmtestbed.ganeti.lock import LabLock  # noqa: E402

from bench.results import Results  # noqa: E402

INDEX = 61
INST = instance_name(INDEX)
MASTER = "node1.example.test"
HOOKPACK = str(hookpack_install.VENV / "bin/hookpack")
CONFIG = f"""\
[log]
syslog = false  # no syslog daemon in the lab's nodes
[policy]
enabled = true
name_pattern = '{hookpack_install.NAME_PATTERN}'
[shaping]
enabled = true
uplink = "eth1"
classifier = "auto"
egress_rate = "50mbit"
ingress_rate = "40mbit"
[pinning]
enabled = true
"""
# (label, argv, the guest boots afterwards)
OPS = [
    ("reboot", ["gnt-instance", "reboot", INST], True),
    ("migrate", ["gnt-instance", "migrate", "-f", INST], False),
    ("grow-disk", ["gnt-instance", "grow-disk", INST, "0", "8M"], False),
    ("shutdown", ["gnt-instance", "shutdown", INST], False),
    ("startup", ["gnt-instance", "startup", INST], True),
]


def set_hooks(lab: Lab, on: bool) -> None:
    for node in lab.nodes:
        if on:
            config = lab.node_file(node, "/etc/hookpack/hookpack.toml")
            config.write_text(CONFIG)
            config.chmod(0o600)
            lab.run_on(node, [HOOKPACK, "hooks", "install", "--root", "/etc/ganeti/hooks"],
                       check=True)
        else:
            lab.run_on(node, [HOOKPACK, "hooks", "uninstall", "--root", "/etc/ganeti/hooks"],
                       check=True)
        entries = lab.run_on(node, ["sh", "-c", "ls /etc/ganeti/hooks/*.d | grep -c hookpack"])
        count = int(entries.stdout.strip() or 0)
        if (count > 0) != on:
            raise SystemExit(f"{node.name}: {count} hookpack entries with hooks {on}")


STOPWATCH = "/var/log/hookpack/hpbench-times"  # node-private in the lab
STOPWATCH_SCRIPT = ("#!/bin/sh\necho \"$(date +%s.%N) {edge} $GANETI_HOOKS_PATH "
                    "$GANETI_HOOKS_PHASE\" >> " + STOPWATCH + "\n")


# The hooks directories of OPS' operations: made when missing (without hookpack's entries
# Ganeti's tree may not have them), so both modes run the same stopwatches.
OP_HPATHS = ("instance-reboot", "instance-migrate", "disk-grow", "instance-stop",
             "instance-start")


def set_stopwatches(lab: Lab, on: bool) -> None:
    dirs = [f"/etc/ganeti/hooks/{hpath}-{phase}.d" for hpath in OP_HPATHS
            for phase in ("pre", "post")]
    for node in lab.nodes:
        if on:
            lab.run_on(node, ["mkdir", "-p", *dirs], check=True)
            script = "; ".join(
                f"printf '%s' '{STOPWATCH_SCRIPT.format(edge=edge)}' > $d/{name}; "
                f"chmod 755 $d/{name}" for edge, name in (("begin", "00-hpbench-a"),
                                                          ("end", "zz-hpbench-z")))
            lab.run_on(node, ["sh", "-c", f"for d in /etc/ganeti/hooks/*.d; do {script}; "
                                          f"done; rm -f {STOPWATCH}"], check=True)
        else:
            lab.run_on(node, ["sh", "-c", "rm -f /etc/ganeti/hooks/*.d/00-hpbench-a "
                                          f"/etc/ganeti/hooks/*.d/zz-hpbench-z {STOPWATCH}"])


def seconds_in_hooks(lab: Lab) -> float:
    """Sum over phases of the longest node's run of that phase's directory; resets."""
    longest: dict[tuple[str, str], float] = {}
    for node in lab.nodes:
        lines = lab.run_on(node, ["sh", "-c", f"cat {STOPWATCH} 2>/dev/null; "
                                              f": > {STOPWATCH}"]).stdout.split("\n")
        began: dict[tuple[str, str], float] = {}
        for line in lines:
            parts = line.split()
            if len(parts) != 4:
                continue
            when, edge, key = float(parts[0]), parts[1], (parts[2], parts[3])
            if edge == "begin":
                began[key] = when
            elif key in began:
                longest[key] = max(longest.get(key, 0.0), when - began.pop(key))
    return sum(longest.values())


def measure(lab: Lab, rounds: int) -> tuple[dict[tuple[str, bool], list[float]],
                                            dict[tuple[str, bool], list[float]]]:
    times: dict[tuple[str, bool], list[float]] = {(op, on): [] for op, _, _ in OPS
                                                  for on in (False, True)}
    hooks: dict[tuple[str, bool], list[float]] = {key: [] for key in times}
    for node in lab.nodes:
        lab.run_on(node, ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"])
    lab.add_instance(INDEX, MASTER)
    lab.wait_guest(INST, instance_ip(INDEX), timeout=300)
    for r in range(rounds):
        for on in ((False, True) if r % 2 == 0 else (True, False)):
            set_hooks(lab, on)
            set_stopwatches(lab, True)
            for label, argv, boots in OPS:
                start = time.monotonic()
                lab.gnt(*argv)
                times[(label, on)].append(time.monotonic() - start)
                hooks[(label, on)].append(seconds_in_hooks(lab))
                if boots:
                    lab.wait_guest(INST, instance_ip(INDEX), timeout=300)
            print(f"round {r + 1}/{rounds} hooks {'on ' if on else 'off'}: " + ", ".join(
                f"{label} {times[(label, on)][-1]:.2f} s ({1000 * hooks[(label, on)][-1]:.0f} "
                "ms in hooks)" for label, _, _ in OPS), flush=True)
    return times, hooks


def report(times: dict[tuple[str, bool], list[float]],
           hooks: dict[tuple[str, bool], list[float]], rounds: int,
           results: Results) -> None:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\nganeti ops cost, median of {rounds} rounds per mode, interleaved; commit {commit}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'operation':10} {'without':>9} {'with':>9} {'added':>9} {'%':>7} "
          f"{'in hooks without / with':>24}   spread without / with (max - min)")
    for label, _, _ in OPS:
        off = statistics.median(times[(label, False)])
        on = statistics.median(times[(label, True)])
        spread = [max(times[(label, m)]) - min(times[(label, m)]) for m in (False, True)]
        results.add(f"{label}_without_s", off)
        results.add(f"{label}_with_s", on)
        results.add(f"{label}_added_ms", 1000 * (on - off))
        results.add(f"{label}_added_pct", 100 * (on - off) / off)
        in_hooks = [1000 * statistics.median(hooks[(label, m)]) for m in (False, True)]
        results.add(f"{label}_in_hooks_without_ms", in_hooks[0])
        results.add(f"{label}_in_hooks_with_ms", in_hooks[1])
        print(f"{label:10} {off:8.2f}s {on:8.2f}s {1000 * (on - off):+7.0f}ms "
              f"{100 * (on - off) / off:+6.1f}% {in_hooks[0]:12.0f}ms / {in_hooks[1]:.0f}ms"
              f"   {spread[0]:.2f}s / {spread[1]:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = Results("ganeti_ops_cost", rounds=args.rounds, statistic="median",
                      timed="whole gnt-instance command on the master")
    with LabLock(wait=1800, who="bench/ganeti_ops_cost.py"):
        lab = Lab()
        brought_up = not lab.is_up
        if brought_up:
            lab.clear_leftover()
            lab.up(nodes=2, owner="cli")
            lab.install_hookpack()
        try:
            times, hooks = measure(lab, args.rounds)
        finally:
            set_stopwatches(lab, False)
            lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST, check=False)
            for node in lab.nodes:
                lab.run_on(node, [HOOKPACK, "shaping", "clear", "--all", "--yes"])
                hookpack_install.install_on(node)  # the lab's own config and entries
            if brought_up:
                lab.down()
    report(times, hooks, args.rounds, results)
    results.save()


if __name__ == "__main__":
    main()

"""Benchmark: what hookpack's hooks add to real Ganeti operations (issue 21).

In the real 2-node Ganeti lab (vm-testbed/vmtestbed/ganeti), one running instance
(sharedfile) goes through reboot, migrate, grow-disk, shutdown and startup in three
modes: without hookpack's hook entries (`hookpack hooks uninstall`), with them and the
hook server running on every node (`hookpack hook-server`, as the role's unit runs it:
the production shape), and with them but no hook server (each run starts its own
Python). The modes take turns round by round (the order rotated each round, so load
drifts and the migrate direction hit all alike). Timed: the whole `gnt-instance`
command on the master, as an operator sees it. The guest is waited for (untimed) after
every operation that boots it, so a shutdown always finds a booted guest. Printed per
operation: the median per mode, the ms added (with the server; and without it) and the %.

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


MODES = ("without", "with", "noserver")  # no entries / entries + server / entries alone


def set_mode(lab: Lab, mode: str) -> None:
    on = mode != "without"
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
        if mode == "with":
            hookpack_install.start_hook_server(node)
        else:
            hookpack_install.stop_hook_server(node)
        entries = lab.run_on(node, ["sh", "-c", "ls /etc/ganeti/hooks/*.d | grep -c hookpack"])
        count = int(entries.stdout.strip() or 0)
        if (count > 0) != on:
            raise SystemExit(f"{node.name}: {count} hookpack entries in mode {mode}")


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


Series = dict[tuple[str, str], list[float]]  # (operation, mode) -> one figure per round


def measure(lab: Lab, rounds: int) -> tuple[Series, Series]:
    times: Series = {(op, mode): [] for op, _, _ in OPS for mode in MODES}
    hooks: Series = {key: [] for key in times}
    for node in lab.nodes:
        lab.run_on(node, ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"])
    lab.add_instance(INDEX, MASTER)
    lab.wait_guest(INST, instance_ip(INDEX), timeout=300)
    for r in range(rounds):
        for mode in MODES[r % 3:] + MODES[:r % 3]:
            set_mode(lab, mode)
            set_stopwatches(lab, True)
            for label, argv, boots in OPS:
                start = time.monotonic()
                lab.gnt(*argv)
                times[(label, mode)].append(time.monotonic() - start)
                hooks[(label, mode)].append(seconds_in_hooks(lab))
                if boots:
                    lab.wait_guest(INST, instance_ip(INDEX), timeout=300)
            print(f"round {r + 1}/{rounds} {mode:8}: " + ", ".join(
                f"{label} {times[(label, mode)][-1]:.2f} s ({1000 * hooks[(label, mode)][-1]:.0f} "
                "ms in hooks)" for label, _, _ in OPS), flush=True)
    return times, hooks


def report(times: Series, hooks: Series, rounds: int, results: Results) -> None:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"\nganeti ops cost, median of {rounds} rounds per mode, interleaved; commit {commit}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'operation':10} {'without':>9} {'with':>9} {'added':>9} {'%':>7} "
          f"{'no server':>10} {'added':>9}   in hooks without / with / no server")
    for label, _, _ in OPS:
        med = {mode: statistics.median(times[(label, mode)]) for mode in MODES}
        off = med["without"]
        for mode in MODES:
            results.add(f"{label}_{mode}_s", med[mode])
            results.add(f"{label}_in_hooks_{mode}_ms",
                        1000 * statistics.median(hooks[(label, mode)]))
        for mode, key in (("with", "added"), ("noserver", "noserver_added")):
            results.add(f"{label}_{key}_ms", 1000 * (med[mode] - off))
            results.add(f"{label}_{key}_pct", 100 * (med[mode] - off) / off)
        in_hooks = " / ".join(f"{1000 * statistics.median(hooks[(label, m)]):.0f}"
                              for m in MODES)
        print(f"{label:10} {off:8.2f}s {med['with']:8.2f}s {1000 * (med['with'] - off):+7.0f}ms "
              f"{100 * (med['with'] - off) / off:+6.1f}% {med['noserver']:9.2f}s "
              f"{1000 * (med['noserver'] - off):+7.0f}ms   {in_hooks} ms")


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

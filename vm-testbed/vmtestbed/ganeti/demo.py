"""The main demo: a real Ganeti cluster runs hookpack's hooks around an instance's life.

Brings the two-node lab up, rolls hookpack out on the nodes, drives one instance through
add, grow-disk, live migrate, failover, reboot, shutdown, startup and remove, tries an
add that the policy action vetoes, and prints after each operation what changed on the
nodes and in the guest and where hookpack ran (from its record action). Ends with a
summary table, then brings the lab down (also on failure or Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vmtestbed.ganeti.lab import Lab
from vmtestbed.ganeti.layout import instance_ip, instance_name

INST = instance_name(1)
IP = instance_ip(1)
BAD = "web1.example.test"


@dataclass
class Row:
    op: str
    seconds: float
    pre: str
    post: str
    effect: str


def _short(name: str) -> str:
    return name.split(".")[0]


def _where(lab: Lab, hpath: str, instance: str) -> tuple[str, str, list[str]]:
    """Nodes hookpack ran on per phase, and a line per run with its roles."""
    runs = sorted((r["phase"] != "pre", r["node"], r["phase"], r["roles"])
                  for n in lab.nodes for r in lab.records(n)
                  if r["hpath"] == hpath and r["instance"] == instance)
    pre = ",".join(_short(n) for _, n, ph, _ in runs if ph == "pre") or "-"
    post = ",".join(_short(n) for _, n, ph, _ in runs if ph == "post") or "-"
    lines = [f"{ph:4} on {_short(n)}: {','.join(roles)}" for _, n, ph, roles in runs]
    return pre, post, lines


class Demo:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.rows: list[Row] = []

    def step(self, op: str, hpath: str, argv: list[str], effect: Callable[[], str],
             instance: str = INST, expect_fail: bool = False) -> None:
        lab = self.lab
        lab.clear_records()
        print(f"\n== {op}: {' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        r = lab.gnt(*argv, check=not expect_fail)
        seconds = time.monotonic() - t0
        if expect_fail:
            why = [line.strip() for line in (r.stdout + r.stderr).replace("\\n", "\n")
                   .splitlines() if "veto" in line or "Failure" in line]
            print(f"   job failed (exit {r.returncode}) as it should:")
            for line in why:
                print(f"     {line[:150]}")
        what = effect()
        pre, post, lines = _where(lab, hpath, instance)
        print(f"   {seconds:.1f} s; effect: {what}")
        for line in lines:
            print(f"   hookpack {hpath} {line}")
        self.rows.append(Row(op, seconds, pre, post, what))

    def summary(self) -> None:
        print("\n== summary")
        print(f"   {'operation':11} {'time':>6}  {'pre on':12} {'post on':12} effect")
        for r in self.rows:
            print(f"   {r.op:11} {r.seconds:5.1f}s  {r.pre:12} {r.post:12} {r.effect}")


def run_demo(lab: Lab) -> Demo:
    d = Demo(lab)
    state: dict[str, float] = {}

    def placed() -> str:
        info = lab.instance_info(INST, ["pnode", "status"])
        pid = lab.qemu_pid(INST, info["pnode"])
        return f"{info['status']} on {_short(info['pnode'])} (QEMU pid {pid})"

    def added() -> str:
        lab.wait_guest(INST, IP)
        state["uptime"] = lab.guest_uptime(INST)
        return f"{placed()}, guest up, answers ping at {IP}"

    def grown() -> str:
        size = lab.instance_info(INST, ["disk.size/0"])["disk.size/0"]
        seen = lab.guest_disk_bytes(INST) // 2**20
        return f"Ganeti disk 0 = {size}, guest sees {seen} MiB before any reboot"

    def migrated() -> str:
        up = lab.guest_uptime(INST)
        kept = "kept running" if up > state["uptime"] else "REBOOTED"
        state["uptime"] = up
        return f"{placed()}, guest uptime {up:.0f} s: {kept}"

    def restarted() -> str:
        lab.wait_guest(INST, IP)
        up = lab.guest_uptime(INST)
        state["uptime"] = up
        return f"{placed()}, guest restarted (uptime {up:.0f} s), sees " \
               f"{lab.guest_disk_bytes(INST) // 2**20} MiB"

    def stopped() -> str:
        return placed()

    def removed() -> str:
        names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
        return "gone" if INST not in names else "STILL THERE"

    def vetoed() -> str:
        names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
        return "not created" if BAD not in names else "CREATED"

    add = ["gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default", "--disk",
           "0:size=64M", "-B", "memory=128", "--net", f"0:ip={IP}", "--no-ip-check",
           "--no-name-check", "-H",
           f"kvm:kernel_args=console=ttyS0 hp.ip={IP}/24 hp.hostname=inst1",
           "-n", "node2.example.test", INST]
    d.step("add", "instance-add", add, added)
    d.step("grow-disk", "disk-grow", ["gnt-instance", "grow-disk", INST, "0", "32M"], grown)
    d.step("migrate", "instance-migrate", ["gnt-instance", "migrate", "-f", INST], migrated)
    d.step("failover", "instance-failover", ["gnt-instance", "failover", "-f", INST],
           restarted)
    d.step("reboot", "instance-reboot", ["gnt-instance", "reboot", INST], restarted)
    d.step("shutdown", "instance-stop", ["gnt-instance", "shutdown", INST], stopped)
    d.step("startup", "instance-start", ["gnt-instance", "startup", INST], restarted)
    d.step("veto", "instance-add",
           ["gnt-instance", "add", "-t", "diskless", "-o", "noop+default", "-B", "memory=64",
            "--no-ip-check", "--no-name-check", "--no-start", "-n", "node1.example.test", BAD],
           vetoed, instance=BAD, expect_fail=True)
    d.step("remove", "instance-remove", ["gnt-instance", "remove", "-f", INST], removed)
    return d


def main(nodes: int = 2, keep: bool = False) -> int:
    lab = Lab()
    if lab.is_up or lab.nodes:
        print("== a lab is up already: bringing it down first")
        lab.down()
    t0 = time.monotonic()
    try:
        print(f"== lab up: {nodes} Ganeti nodes (network+UTS+mount namespaces)", flush=True)
        timings = lab.up(nodes=nodes)
        print(f"   up in {timings[f'up_{nodes}_nodes']:.1f} s: "
              + ", ".join(n.name for n in lab.nodes))
        print("== hookpack rolled out: venv + `hookpack hooks install` on each node", flush=True)
        lab.install_hookpack()
        print(f"   venv {lab.timings['hookpack_venv']:.1f} s, nodes "
              f"{lab.timings['hookpack_nodes']:.1f} s")
        demo = run_demo(lab)
        demo.summary()
    finally:
        if keep:
            print("\n== lab left up (--keep): `vm-testbed ganeti down` removes it")
        else:
            t1 = time.monotonic()
            report = lab.down()
            print(f"\n== lab down in {time.monotonic() - t1:.1f} s"
                  + (f"; problems: {report.problems}" if report.problems else ""))
    print(f"== demo took {time.monotonic() - t0:.0f} s")
    return 0

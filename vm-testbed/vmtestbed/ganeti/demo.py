"""The main demo: a real Ganeti cluster runs hookpack's hooks around an instance's life.

Brings the two-node lab up, starts a PowerDNS and a webhook receiver in the master's
namespaces, rolls hookpack out on the nodes with the project's Ansible playbook (over
ssh, from a controller on the master node; shaping, pinning, announce and dns enabled),
drives one instance through add, a shaping tag, grow-disk, live migrate, failover,
reboot, shutdown, startup and remove, tries an add that the policy action vetoes, and
prints after each operation what changed on the nodes and in the guest and where
hookpack ran (from its record action). What each action is for is measured and checked
(vmtestbed/ganeti/demo_effects.py): the instance's DNS records in PowerDNS, the guest's
upload rate against its class before and after the tag, its vCPU -> CPU -> NUMA node
pins after every start, the announcement the live migration sent. Ends with a summary
table, then brings the lab down (also on failure or Ctrl-C); exits 1 if a check failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmtestbed.ganeti import ansible_rollout
from vmtestbed.ganeti import demo_effects as fx
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.lab import Lab
from vmtestbed.ganeti.layout import instance_ip, instance_name
from vmtestbed.ganeti.lock import LabLock
from vmtestbed.shapemeter import Measurement, within

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
    def __init__(self, lab: Lab, sinks: fx.Sinks) -> None:
        self.lab = lab
        self.sinks = sinks
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.op = ""
        self.webhooks_seen = 0  # webhook requests received before the current step

    def check(self, ok: bool, text: str) -> str:
        """``text`` as the effect; a failed check is marked and makes the demo exit 1."""
        if ok:
            return text
        self.failures.append(f"{self.op}: {text}")
        return f"{text} [CHECK FAILED]"

    def new_webhooks(self) -> list[dict[str, Any]]:
        return self.sinks.webhooks()[self.webhooks_seen:]

    def step(self, op: str, hpath: str, argv: list[str], effect: Callable[[], str],
             instance: str = INST, expect_fail: bool = False,
             before: Callable[[], None] | None = None) -> None:
        lab = self.lab
        self.op = op
        lab.clear_records()
        self.webhooks_seen = len(self.sinks.webhooks())
        print(f"\n== {op}: {' '.join(argv)}", flush=True)
        if before is not None:
            before()
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
        if self.failures:
            print(f"\n== {len(self.failures)} check(s) FAILED:")
            for f in self.failures:
                print(f"   {f}")
        else:
            print("\n== every check passed")


def _rate(history: list[Measurement]) -> str:
    """The judged (last) attempt's wire rate, and the earlier attempts if any."""
    text = f"{history[-1].wire:.1f} Mbit/s"
    if len(history) > 1:
        text += f" (attempts {', '.join(f'{m.wire:.1f}' for m in history)})"
    return text


def run_demo(lab: Lab, sinks: fx.Sinks) -> Demo:
    d = Demo(lab, sinks)
    state: dict[str, Any] = {}
    n1, n2 = "node1.example.test", "node2.example.test"  # the master, the other

    def placed() -> str:
        info = lab.instance_info(INST, ["pnode", "status"])
        pid = lab.qemu_pid(INST, info["pnode"])
        return f"{info['status']} on {_short(info['pnode'])} (QEMU pid {pid})"

    def pins() -> str:
        got = fx.read_pins(lab, INST)
        return d.check(got.one_to_one, f"pins {got.describe()}")

    def dns(present: bool) -> str:
        got = sinks.records(INST, IP)
        want = {"A": {IP}, "PTR": {INST + "."}} if present else {}
        seen = ", ".join(f"{k} {' '.join(sorted(v))}" for k, v in sorted(got.items()))
        return d.check(got == want, f"PowerDNS: {seen or 'no A, no PTR'}")

    def announced() -> str:
        """The webhook requests this step made, as the receiver got them."""
        new = d.new_webhooks()
        texts = [f"{w['body'].get('type')} from {w['peer']}: \"{w['body'].get('text')}\""
                 for w in new]
        return "webhook got " + ("; ".join(texts) if texts else "nothing")

    def added() -> str:
        lab.wait_guest(INST, IP)
        state["uptime"] = lab.guest_uptime(INST)
        return f"{placed()}, guest up, answers ping at {IP}; {dns(True)}"

    def measure_untagged() -> None:
        node = lab.primary_of(INST)
        state["class"] = fx.egress_class_mbit(lab, node, INST)
        state["rate"] = fx.measure_egress(lab, INST, state["class"])

    def tagged() -> str:
        node = lab.primary_of(INST)
        applied = fx.apply_shaping(lab, node)
        print(f"   hookpack shaping apply --all on {_short(node.name)}: {applied}")
        cls = fx.egress_class_mbit(lab, node, INST)
        after = fx.measure_egress(lab, INST, cls)
        before = state["rate"]
        ok = (state["class"] == fx.EGRESS_MBIT and cls == fx.TAG_MBIT
              and within(before[-1].wire, state["class"]) and within(after[-1].wire, cls))
        return d.check(ok, f"egress {_rate(before)} measured vs {state['class']:g} Mbit class; "
                           f"after tag {fx.TAG_MBIT}mbit: {_rate(after)} vs {cls:g} Mbit class")

    def grown() -> str:
        size = lab.instance_info(INST, ["disk.size/0"])["disk.size/0"]
        seen = lab.guest_disk_bytes(INST) // 2**20
        return f"Ganeti disk 0 = {size}, guest sees {seen} MiB before any reboot"

    def migrated() -> str:
        up = lab.guest_uptime(INST)
        kept = d.check(up > state["uptime"], "kept running" if up > state["uptime"]
                       else "REBOOTED")
        state["uptime"] = up
        new = d.new_webhooks()
        body = new[0]["body"] if len(new) == 1 else {}
        ok = (len(new) == 1 and body.get("type") == "live-migration"
              and body.get("instance") == INST and body.get("source") == n2
              and body.get("target") == n1 and new[0]["peer"] == sinks.master_ip)
        return (f"{placed()}, guest uptime {up:.0f} s: {kept}; {pins()}; "
                + d.check(ok, announced()))

    def restarted() -> str:
        lab.wait_guest(INST, IP)
        up = lab.guest_uptime(INST)
        state["uptime"] = up
        text = f"{placed()}, guest restarted (uptime {up:.0f} s), sees " \
               f"{lab.guest_disk_bytes(INST) // 2**20} MiB; {pins()}"
        return text + (f"; {announced()}" if d.new_webhooks() else "")

    def stopped() -> str:
        return placed()

    def removed() -> str:
        names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
        gone = d.check(INST not in names, "gone" if INST not in names else "STILL THERE")
        return f"{gone}; {dns(False)}"

    def vetoed() -> str:
        names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
        return d.check(BAD not in names, "not created" if BAD not in names else "CREATED")

    add = ["gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default", "--disk",
           "0:size=64M", "-B", "memory=128", "--net", f"0:ip={IP}", "--no-ip-check",
           "--no-name-check", "-H",
           f"kvm:kernel_args=console=ttyS0 hp.ip={IP}/24 hp.hostname=inst1",
           "-n", n2, INST]
    d.step("add", "instance-add", add, added)
    # Ganeti runs no hook for a tag change: the reconcile timer's `shaping apply --all`
    # (run here at once) reads the tags from Ganeti's confd.
    d.step("tag", "-", ["gnt-instance", "add-tags", INST, f"hookpack:egress:{fx.TAG_MBIT}mbit"],
           tagged, before=measure_untagged)
    d.step("grow-disk", "disk-grow", ["gnt-instance", "grow-disk", INST, "0", "32M"], grown)
    d.step("migrate", "instance-migrate", ["gnt-instance", "migrate", "-f", INST], migrated)
    d.step("failover", "instance-failover", ["gnt-instance", "failover", "-f", INST],
           restarted)
    d.step("reboot", "instance-reboot", ["gnt-instance", "reboot", INST], restarted)
    d.step("shutdown", "instance-stop", ["gnt-instance", "shutdown", INST], stopped)
    d.step("startup", "instance-start", ["gnt-instance", "startup", INST], restarted)
    d.step("veto", "instance-add",
           ["gnt-instance", "add", "-t", "diskless", "-o", "noop+default", "-B", "memory=64",
            "--no-ip-check", "--no-name-check", "--no-start", "-n", n1, BAD],
           vetoed, instance=BAD, expect_fail=True)
    d.step("remove", "instance-remove", ["gnt-instance", "remove", "-f", INST], removed)
    return d


def rollout(lab: Lab, sinks: fx.Sinks) -> None:
    """hookpack onto every node with the project's playbook (ansible/site.yml), over ssh
    from a controller in the master's namespaces (vmtestbed/ganeti/ansible_rollout.py)."""
    print("== hookpack rolled out with the Ansible playbook (ansible/site.yml): "
          "ansible-playbook on node1, over ssh to each node; shaping (egress "
          f"{fx.EGRESS_MBIT}mbit), pinning, announce (webhook {sinks.receiver_url}), "
          f"dns (PowerDNS {sinks.server.url}) enabled", flush=True)
    t0 = time.monotonic()
    ansible_rollout.prepare(lab, config=sinks.config(), secrets=sinks.secrets())
    t1 = time.monotonic()
    result = ansible_rollout.play(lab)
    t2 = time.monotonic()
    for line in result.recap_text().splitlines():
        print(f"   {line}")
    if result.returncode:
        raise LabError(f"the playbook failed:\n{result.failure()}")
    print(f"   wheels + inventory {t1 - t0:.1f} s, playbook {t2 - t1:.1f} s")


def main(nodes: int = 2, keep: bool = False) -> int:
    lab = Lab()
    lock = LabLock(wait=1800, who="vm-testbed ganeti demo")
    print("== waiting for the lab (one per machine)", flush=True)
    lock.acquire()
    try:
        lab.clear_leftover(wait=1800)
    except BaseException:
        lock.release()
        raise
    t0 = time.monotonic()
    try:
        print(f"== lab up: {nodes} Ganeti nodes (network+UTS+mount namespaces)", flush=True)
        timings = lab.up(nodes=nodes, owner="cli" if keep else "demo")
        print(f"   up in {timings[f'up_{nodes}_nodes']:.1f} s: "
              + ", ".join(n.name for n in lab.nodes))
        print("== PowerDNS and a webhook receiver in node1's namespaces", flush=True)
        with fx.running_sinks(lab) as sinks:
            rollout(lab, sinks)
            demo = run_demo(lab, sinks)
            demo.summary()
    finally:
        if keep:
            print("\n== lab left up (--keep): `vm-testbed ganeti down` removes it")
        else:
            t1 = time.monotonic()
            report = lab.down()
            print(f"\n== lab down in {time.monotonic() - t1:.1f} s"
                  + (f"; problems: {report.problems}" if report.problems else ""))
        lock.release()
    print(f"== demo took {time.monotonic() - t0:.0f} s")
    return 1 if demo.failures else 0

"""Per-VM traffic shaping: HTB classes on the uplink and on each tap, kept in step."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hookpack.action import ActionContext, Paths
from hookpack.config import Field
from hookpack.errors import ActionError, BadInput
from hookpack.result import Result

SETTINGS = {
    "uplink": Field(str, "", "The public interface the instances' traffic leaves by (not "
                    "the bridge). Required: shaping does nothing without it."),
    "egress_rate": Field(str, "100mbit", "Default VM -> world rate per NIC (tc units: "
                         "kbit, mbit, gbit = 10^3/10^6/10^9 bit/s; kbps... = bytes/s)."),
    "ingress_rate": Field(str, "100mbit", "Default world -> VM rate per NIC."),
    "max_egress_rate": Field(str, "", "Highest egress rate a `hookpack:egress:` tag may "
                             "ask for. Empty: egress_rate (tags can only lower it)."),
    "max_ingress_rate": Field(str, "", "Highest rate a `hookpack:ingress:` tag may ask "
                              "for. Empty: ingress_rate."),
    "uplink_rate": Field(str, "10gbit", "Rate of the uplink's default class: traffic of "
                         "the host and of unshaped VMs (effectively unlimited)."),
    "mtu": Field(int, 1500, "MTU used for bursts and quanta.", minimum=576, maximum=65536),
    "classifier": Field(str, "auto", "How packets find their class: `fw` (MARK + cls_fw "
                        "filter), `classify` (CLASSIFY --set-class, no filter) or `auto` "
                        "(fw when the kernel has a working cls_fw).",
                        choices=("auto", "fw", "classify")),
    # Not 0: the kernel takes handle 0: as "pick one" (8001:...), so hookpack would not
    # find its own qdisc again and refuse it as foreign on the next run.
    "handle": Field(str, "4850", "Hex major number of hookpack's HTB qdiscs (1-ffff).",
                    pattern=r"(?!0+$)[0-9a-f]{1,4}"),
    "fw_prio": Field(int, 4850, "Priority of hookpack's fw filters.", minimum=1,
                     maximum=65535),
    "fw_mask": Field(int, 0xFFFF, "Mark bits hookpack's MARK rules and fw filters use.",
                     minimum=0xFFFF, maximum=0xFFFFFFFF),
    "shape_ingress": Field(bool, True, "Also shape world -> VM (HTB on each tap)."),
    "ipv6": Field(bool, True, "Also classify IPv6 (ip6tables rules)."),
    "iptables_backend": Field(str, "auto", "Backend to write rules with: `auto` (what "
                              "`iptables -V` says), `nf_tables` or `legacy`.",
                              choices=("auto", "nf_tables", "legacy")),
    "reconcile_interval": Field(int, 300, "Seconds between two `hookpack shaping apply "
                                "--all` runs of hookpack-shaping-reconcile.timer (the "
                                "Ansible role installs it and writes this key from "
                                "hookpack_shaping_reconcile_interval); 0: no timer.",
                                minimum=0, maximum=86400),
    "replace_foreign_qdisc": Field(bool, False, "Replace a root qdisc on the uplink or a "
                                   "tap that hookpack did not create."),
}
LOCK = "shaping"


def run(ctx: ActionContext) -> Result:
    inst = ctx.env.instance_after or ctx.env.instance
    if inst is None or not inst.name:
        return Result.skipped("no instance in the environment")
    name = inst.name
    tags = list(inst.tags)
    report = reconcile(ctx.settings, ctx.paths, [name], tags={name: tags},
                       timeout=ctx.deadline.remaining)
    if ctx.env.hpath == "instance-remove":
        from hookpack.shaping.policy import PolicyStore

        PolicyStore(ctx.paths.state_dir).forget(name)
    return report.result()


class Report:
    def __init__(self) -> None:
        self.changes: list[str] = []
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.netlink_writes = 0
        self.iptables_writes = 0
        self.iptables_saves = 0
        self.classifier = ""
        self.ms = 0.0
        self.kernel: Any = None
        self.policies: dict[str, Any] = {}

    def result(self) -> Result:
        notes = f" ({'; '.join(self.notes[:2])})" if self.notes else ""
        if self.failures:
            return Result.failed("; ".join(self.failures[:3]) + notes)
        if self.changes:
            head = "; ".join(self.changes[:4])
            more = f"; +{len(self.changes) - 4} more" if len(self.changes) > 4 else ""
            return Result.changed(head + more + notes, self.changes)
        return Result.nochange("in step" + notes)

    def to_json(self) -> dict[str, Any]:
        return {"changes": self.changes, "notes": self.notes, "failures": self.failures,
                "writes": {"netlink": self.netlink_writes, "iptables": self.iptables_writes},
                "reads": {"iptables_save": self.iptables_saves},
                "classifier": self.classifier, "ms": round(self.ms, 1)}


@contextmanager
def _session(settings: Mapping[str, Any], paths: Paths, timeout: Any) -> Iterator[Any]:
    from hookpack.locks import node_lock
    from hookpack.shaping import classifier, netfilter, tc
    from hookpack.shaping.reconcile import Reconciler, Settings

    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    s = Settings.from_config(settings, mode)
    with node_lock(paths.run_dir, LOCK, max(0.5, timeout() - 0.5)):
        nf = netfilter.Netfilter(netfilter.detect(str(settings["iptables_backend"])),
                                 s.families, timeout=max(1.0, min(30.0, timeout() - 0.5)),
                                 cache=netfilter.SaveCache(paths.run_dir / "shaping-mangle.json"))
        with tc.Netlink(timeout=max(1.0, min(10.0, timeout()))) as nl:
            rec = Reconciler(s, kvm_dir=paths.kvm_dir, state_dir=paths.state_dir, nl=nl, nf=nf)
            yield rec, why


def reconcile(settings: Mapping[str, Any], paths: Paths, instances: Iterable[str] | None, *,
              tags: Mapping[str, Iterable[str]] | None = None, clear: bool = False,
              dry_run: bool = False, timeout: Any = lambda: 60.0) -> Report:
    """Plan (and unless ``dry_run`` apply) for ``instances`` (None: the whole node)."""
    start = time.perf_counter()
    report = Report()
    with _session(settings, paths, timeout) as (rec, why):
        report.classifier = f"{rec.s.classifier}: {why}"
        plan = rec.plan(None if instances is None else list(instances), tags=tags, clear=clear)
        report.kernel = rec.kernel
        report.policies = plan.policies
        report.changes = plan.changes
        if not dry_run and not plan.empty:
            report.failures = rec.apply(plan)
        report.notes = plan.notes
        report.netlink_writes = rec.nl.writes
        report.iptables_writes = rec.nf.writes
        report.iptables_saves = rec.nf.save_runs
    report.ms = (time.perf_counter() - start) * 1000
    return report


# ---- CLI --------------------------------------------------------------------------------


def add_cli(sub: Any) -> None:
    p = sub.add_parser("shaping", help="per-VM traffic shaping (show, plan, apply, clear)")
    actions = p.add_subparsers(metavar="ACTION")
    for verb, helptext in (("show", "what hookpack has in the kernel, per tap"),
                           ("plan", "what apply would change (writes nothing)"),
                           ("apply", "bring the kernel in step (INSTANCE, or --all)"),
                           ("clear", "remove hookpack's shaping (INSTANCE, or all)"),
                           ("doctor", "kernel and firewall facts shaping depends on")):
        q = actions.add_parser(verb, help=helptext)
        q.add_argument("--config", help="config file (default: $HOOKPACK_CONFIG or "
                       "/etc/hookpack/hookpack.toml)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if verb in ("plan", "apply", "clear", "show"):
            q.add_argument("instance", nargs="?", help="one instance (default: all)")
        if verb in ("plan", "apply"):
            q.add_argument("--all", action="store_true", help="every instance on this node")
        if verb == "doctor":
            q.add_argument("--refresh", action="store_true", help="probe the kernel again")
        q.set_defaults(handler=_cli, verb=verb)


def _load(ns: argparse.Namespace) -> tuple[Mapping[str, Any], Paths, bool]:
    from hookpack.cli import load

    cfg = load(ns)
    settings = cfg.section("shaping", SETTINGS)
    return settings, Paths.from_config(cfg), bool(settings["enabled"])


def _cli(ns: argparse.Namespace) -> int:
    settings, paths, enabled = _load(ns)
    if ns.verb == "doctor":
        return _doctor(ns, settings, paths)
    if ns.verb in ("plan", "apply") and bool(ns.all) == bool(ns.instance):
        raise BadInput(f"shaping {ns.verb}: name one INSTANCE or --all")
    if ns.verb == "apply" and not enabled:
        print("shaping: disabled in the configuration ([shaping] enabled = false); "
              "nothing done")
        return 0
    instances = [_name(ns.instance)] if getattr(ns, "instance", None) else None
    report = reconcile(settings, paths, instances, clear=ns.verb == "clear",
                       dry_run=ns.verb in ("plan", "show"))
    if ns.verb == "show":
        return _show(ns, report)
    if ns.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        verb = {"plan": "would change", "apply": "changed", "clear": "changed"}[ns.verb]
        for change in report.changes:
            print(f"{verb}: {change}")
        for note in report.notes:
            print(f"note: {note}")
        for failure in report.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        print(f"shaping {ns.verb}: {len(report.changes)} change(s), "
              f"{report.netlink_writes} netlink write(s), {report.iptables_writes} "
              f"iptables-restore call(s), {report.ms:.0f} ms ({report.classifier})")
    return 1 if report.failures else 0


def _name(text: str) -> str:
    from hookpack import validate

    return validate.instance_name(text)


def _show(ns: argparse.Namespace, report: Report) -> int:
    from hookpack.shaping.model import format_rate

    k = report.kernel
    rows = []
    fam = 4 if 4 in k.nf else next(iter(k.nf), None)
    rules = k.nf[fam].rules if fam is not None else []
    for rule in sorted(rules, key=lambda r: (r.instance, r.nic)):
        klass = k.classes.get(rule.value)
        tap = k.taps.get(rule.tap)
        rows.append({
            "instance": rule.instance, "nic": rule.nic, "tap": rule.tap,
            "class": f"{rule.major or 0:x}:{rule.value:x}" if rule.mode == "classify"
            else f"mark {rule.value:#x}",
            "egress": format_rate(klass.rate) if klass else None,
            "ingress": format_rate(tap.klass.rate) if tap and tap.klass else None,
            "tap_exists": bool(tap and tap.ifindex),
        })
    data = {"uplink_qdisc": k.uplink_root, "classifier": report.classifier, "taps": rows,
            "pending_changes": report.changes, "notes": report.notes}
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"uplink qdisc: {k.uplink_root}; classifier {report.classifier}")
    for row in rows:
        print(f"{row['instance']}/{row['nic']} {row['tap']}: {row['class']} egress "
              f"{row['egress'] or '-'} ingress {row['ingress'] or '-'}"
              + ("" if row["tap_exists"] else " (tap gone)"))
    for change in report.changes:
        print(f"out of step: {change}")
    return 0


def _doctor(ns: argparse.Namespace, settings: Mapping[str, Any], paths: Paths) -> int:
    from hookpack.shaping import classifier, netfilter

    probe = classifier.probe(paths.run_dir, refresh=ns.refresh)
    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    try:
        tools = netfilter.detect(str(settings["iptables_backend"]))
        backend = f"{tools.backend} ({tools.restore[0]})"
    except ActionError as err:
        backend = f"unknown: {err}"
    facts = {
        "cls_fw": probe.get("fw"), "htb": probe.get("htb"),
        "u32_mark": probe.get("u32_mark"), "probe_detail": probe.get("detail", ""),
        "classifier": f"{mode}: {why}", "iptables_backend": backend,
        "bridge_nf_call_iptables": netfilter.bridge_nf_call(4),
        "bridge_nf_call_ip6tables": netfilter.bridge_nf_call(6),
        "uplink": settings["uplink"] or "(not configured)",
    }
    if ns.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:26} {value}")
        if facts["bridge_nf_call_iptables"] is not True:
            print("warning: bridged traffic does not pass iptables (load br_netfilter and "
                  "set net.bridge.bridge-nf-call-iptables=1): physdev rules will not match")
    return 0



def _backend_check(setting: str) -> Any:
    """The backend hookpack writes with against the ones holding rules here."""
    from hookpack.doctor import FAIL, PASS, WARN, Check
    from hookpack.shaping import netfilter

    try:
        tools = netfilter.detect(setting)
    except ActionError as err:
        return Check("shaping iptables", FAIL, str(err),
                     "install iptables, or set shaping.iptables_backend")
    counts = netfilter.rules_by_backend()
    other = "legacy" if tools.backend == "nf_tables" else "nf_tables"
    written = f"writes with {tools.restore[0]} ({tools.backend})"
    if counts.get(other):
        return Check("shaping iptables", WARN, f"{written}, but {counts[other]} rule(s) are "
                     f"loaded through {other}: the host's firewall uses the other backend, "
                     "and each backend's tools cannot see the other's rules",
                     f"use one backend: set shaping.iptables_backend = \"{other}\" "
                     "or move the firewall to the backend `iptables -V` shows")
    return Check("shaping iptables", PASS, f"{written}; rules in use: "
                 + ", ".join(f"{b} {'?' if n is None else n}" for b, n in counts.items()))


def doctor(cfg: Any, paths: Paths) -> list[Any]:
    """`hookpack doctor` checks: HTB, classifier probe, uplink, backend, br_netfilter."""
    from hookpack.doctor import FAIL, PASS, WARN, Check
    from hookpack.shaping import classifier, netfilter, tc

    settings = cfg.section("shaping", SETTINGS)
    checks = []
    probe = classifier.probe(paths.run_dir)
    if probe.get("htb"):
        checks.append(Check("shaping htb", PASS, "the kernel takes an HTB qdisc (probed)"))
    else:
        why = probe.get("detail") or probe.get("error") or "no HTB"
        checks.append(Check("shaping htb", FAIL, f"the kernel refused an HTB qdisc ({why})",
                            "load sch_htb (`modprobe sch_htb`) or boot a kernel with "
                            "CONFIG_NET_SCH_HTB; then `hookpack shaping doctor --refresh`"))
    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    if mode == "fw" and not probe.get("fw"):
        checks.append(Check("shaping classifier", FAIL, f"fw forced but {why}",
                            "set shaping.classifier = \"auto\""))
    else:
        checks.append(Check("shaping classifier", PASS,
                            f"{mode} ({why}); u32 mark match: {probe.get('u32_mark')}"))
    uplink = str(settings["uplink"])
    index = tc.ifindex(uplink) if uplink else None
    if not uplink:
        checks.append(Check("shaping uplink", FAIL, "shaping.uplink is not set",
                            "set it to the public interface (not the bridge)"))
    elif index is None:
        checks.append(Check("shaping uplink", FAIL, f"{uplink} does not exist",
                            "fix shaping.uplink"))
    else:
        with tc.Netlink() as nl:
            (reply,) = nl.transact([tc.get_root_qdisc(index, uplink)])
        from hookpack.shaping.observe import root_state

        obj = reply.objects[0] if reply.objects else None
        state = root_state(obj, int(str(settings["handle"]), 16))
        if state == "foreign" and not settings["replace_foreign_qdisc"]:
            checks.append(Check("shaping uplink", WARN, f"{uplink} has a root qdisc hookpack "
                                f"did not create ({obj.kind if obj else '?'}): shaping refuses",
                                "remove it or set shaping.replace_foreign_qdisc = true"))
        else:
            checks.append(Check("shaping uplink", PASS, f"{uplink} root qdisc: {state}"))
    checks.append(_backend_check(str(settings["iptables_backend"])))
    if netfilter.bridge_nf_call(4, str(paths.proc_root)) is not True:
        checks.append(Check("shaping br_netfilter", FAIL, "bridged traffic does not pass "
                            "iptables: physdev rules cannot classify VM traffic",
                            "modprobe br_netfilter; sysctl -w "
                            "net.bridge.bridge-nf-call-iptables=1 (and ...-ip6tables=1)"))
    else:
        checks.append(Check("shaping br_netfilter", PASS, "bridge-nf-call-iptables = 1"))
    return checks


# -- hookpack status / metrics ------------------------------------------------------------

def status(cfg: Any, paths: Paths, instance_names: list[str]) -> dict[str, Any]:
    """`hookpack status`: per tap, the wanted rate vs the kernel's class and counters."""
    from hookpack.shaping import status as sstatus
    from hookpack.status import Part

    settings = cfg.section("shaping", SETTINGS)
    views = sstatus.observe(settings, paths.kvm_dir, paths.state_dir, instance_names)
    out: dict[str, Any] = {}
    for name in instance_names:
        taps = views.get(name, [])
        lines = []
        for tv in taps:
            head = f"{tv.tap} (nic {tv.nic})"
            if tv.error:
                lines.append(f"{head}: {tv.error}")
            lines += [f"{head}: {sstatus.describe(c)}" for c in tv.classes
                      if not tv.error or c.error != tv.error]
        out[name] = Part({"taps": [tv.to_json() for tv in taps]},
                         lines or ["no NIC files (nic/<instance>/<index>): no tap to show"])
    return out


def metrics(cfg: Any, paths: Paths) -> list[Any]:
    """Shaped bytes, packets, drops and overlimits from the kernel's HTB class counters."""
    from hookpack.metrics import Sample
    from hookpack.shaping import status as sstatus

    settings = cfg.section("shaping", SETTINGS)
    views = sstatus.observe(settings, paths.kvm_dir, paths.state_dir, None)
    samples: list[Sample] = []
    for name, taps in sorted(views.items()):
        totals: dict[tuple[str, str], int] = {}
        for tv in taps:
            for cv in tv.classes:
                if cv.counters is None:
                    continue
                labels = {"instance": name, "nic": str(tv.nic), "tap": tv.tap,
                          "direction": cv.direction}
                for field, value in (("bytes", cv.counters.bytes),
                                     ("packets", cv.counters.packets),
                                     ("drops", cv.counters.drops),
                                     ("overlimits", cv.counters.overlimits)):
                    samples.append(Sample(f"hookpack_shaping_tap_{field}_total", value, labels,
                                          _TAP_HELP[field], "counter"))
                    key = (cv.direction, field)
                    totals[key] = totals.get(key, 0) + value
                samples.append(Sample("hookpack_shaping_tap_rate_bytes_per_second",
                                      cv.rate or 0, labels,
                                      "Rate (= ceil) of the tap's HTB class in the kernel."))
        for (direction, field), value in sorted(totals.items()):
            if field in ("bytes", "drops"):
                samples.append(Sample(f"hookpack_shaping_{field}_total", value,
                                      {"instance": name, "direction": direction},
                                      _INSTANCE_HELP[field], "counter"))
    return samples


_TAP_HELP = {
    "bytes": "Bytes sent through the tap's HTB class (egress: VM -> world on the uplink; "
             "ingress: world -> VM on the tap).",
    "packets": "Packets sent through the tap's HTB class.",
    "drops": "Packets the tap's HTB class dropped.",
    "overlimits": "Times the tap's HTB class was over its rate (packets delayed).",
}
_INSTANCE_HELP = {
    "bytes": "Bytes sent through the HTB classes of the instance's taps, per direction.",
    "drops": "Packets dropped by the HTB classes of the instance's taps, per direction.",
}

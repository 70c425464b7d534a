"""Per-VM traffic shaping: HTB classes on the uplink and on each tap, kept in step."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext, Paths
from hookpack.config import Field, add_config_arg
from hookpack.errors import BadInput

if TYPE_CHECKING:  # the CLI's types; the hook's hot path does not import argparse
    import argparse

    from hookpack.result import Result  # made by the hook's path only

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
    "uplink_rate": Field(str, "10gbit", "Rate of the root class over every class on the "
                         "uplink (set it a little below the link's real speed, so that "
                         "the queue forms in HTB, where the host's share is kept)."),
    "host_rate": Field(str, "", "Guaranteed rate of the host's own traffic (Ganeti RPC, "
                       "DRBD, migration: everything not from a tap), served first, may "
                       "use the whole uplink when VMs leave it idle. Empty: uplink_rate/10."),
    "guaranteed_rate": Field(str, "1mbit", "Rate each VM class is guaranteed under the "
                             "root; above it (up to its limit) a VM borrows what the host "
                             "and the other VMs leave. Keep the sum over all VMs plus "
                             "host_rate below uplink_rate."),
    "egress_scope": Field(str, "nic", "`nic`: one egress limit per NIC; `instance`: all "
                          "NICs of an instance share one limit (a parent class per "
                          "instance; tag `hookpack:egress-scope:instance`). The to-VM "
                          "direction stays per NIC.", choices=("nic", "instance")),
    "leaf_qdisc": Field(str, "auto", "Qdisc under every class, bounding queueing delay: "
                        "`fq_codel`; `tbf` (segments GSO packets, then a fifo of "
                        "leaf_delay_ms at the class's limit); `bfifo` (that fifo alone: "
                        "drops whole GSO packets, TCP loses throughput); `default` (HTB's "
                        "pfifo of 1000 packets: unbounded delay); `auto`: fq_codel when "
                        "the kernel has it, else tbf.",
                        choices=("auto", "fq_codel", "tbf", "bfifo", "default")),
    "leaf_delay_ms": Field(int, 10, "Fifo of a tbf or bfifo leaf, in milliseconds at the "
                           "class's limit.", minimum=1, maximum=1000),
    "mtu": Field(int, 1500, "MTU used for bursts and quanta.", minimum=576, maximum=65536),
    "classifier": Field(str, "auto", "How a marked frame finds its class on the uplink "
                        "(frames are marked at each tap's ingress by nf_tables): `bpf` "
                        "(one cls_bpf classic BPF program, O(1) per packet), `fw` (cls_fw, "
                        "one element per mark) or `auto` (bpf when the kernel has it, else "
                        "fw). `classify` (the retired iptables mode) means `auto`.",
                        choices=("auto", "bpf", "fw", "classify")),
    # Not 0: the kernel takes handle 0: as "pick one" (8001:...), so hookpack would not
    # find its own qdisc again and refuse it as foreign on the next run. Not ffff: the
    # kernel reads a qdisc get by parent ffff:N as the ingress qdisc's (tc_get_qdisc
    # compares TC_H_MAJ with TC_H_MAJ(TC_H_INGRESS)), so a class's leaf is never found.
    "handle": Field(str, "4850", "Hex major number of hookpack's HTB qdiscs (1-fffe).",
                    pattern=r"(?!0+$)(?!f{4}$)[0-9a-f]{1,4}"),
    "fw_prio": Field(int, 4850, "Priority of hookpack's mark -> class filter (bpf or fw) "
                     "on the uplink.", minimum=1, maximum=65535),
    "fw_mask": Field(int, 0xFFFF, "Mark bits hookpack's tap marks and its filter use; "
                     "other bits of a frame's mark are kept.",
                     minimum=0xFFFF, maximum=0xFFFFFFFF),
    "shape_ingress": Field(bool, True, "Also shape world -> VM (HTB on each tap)."),
    "ipv6": Field(bool, True, "No longer used: the tap marks cover every frame, IPv6 "
                  "included. Kept so existing configs stay valid."),
    "iptables_backend": Field(str, "auto", "Backend whose tools remove the iptables rules "
                              "of hookpack's earlier classifier (HOOKPACK-SHAPE), once per "
                              "boot: `auto`, `nf_tables` or `legacy`.",
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
NIC_MODES = ("bridged (plain or VLAN-aware) and routed: shaped (every frame marked at the "
             "tap's ingress); openvswitch: refused (not tested), its NICs are not shaped")


def run(ctx: ActionContext) -> Result:
    from hookpack.result import Result

    inst = ctx.env.instance_after or ctx.env.instance
    if inst is None or not inst.name:
        return Result.skipped("no instance in the environment")
    name = inst.name
    tags = list(inst.tags)
    report = reconcile(ctx.settings, ctx.paths, [name], tags={name: tags},
                       timeout=ctx.deadline.remaining)
    if ctx.env.hpath == "instance-remove":
        from hookpack.actions.shaping.policy import PolicyStore

        PolicyStore(ctx.paths.state_dir).forget(name)
    return report.result()


class Report:
    def __init__(self) -> None:
        self.changes: list[str] = []
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.netlink_writes = 0
        self.nft_writes = 0
        self.classifier = ""
        self.escalated = ""
        self.ms = 0.0
        self.kernel: Any = None
        self.policies: dict[str, Any] = {}

    def result(self) -> Result:
        from hookpack.result import Result

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
                "writes": {"netlink": self.netlink_writes, "nf_tables": self.nft_writes},
                "classifier": self.classifier, "whole_node": self.escalated,
                "ms": round(self.ms, 1)}


@contextmanager
def _session(settings: Mapping[str, Any], paths: Paths, timeout: Any) -> Iterator[Any]:
    from hookpack.actions.shaping import classifier, leaf, nft, tc
    from hookpack.actions.shaping.reconcile import Reconciler, Settings
    from hookpack.locks import node_lock

    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    leaf_kind, _leaf_why = leaf.choose(str(settings["leaf_qdisc"]), paths.run_dir)
    s = Settings.from_config(settings, mode, leaf_kind)
    with node_lock(paths.run_dir, LOCK, max(0.5, timeout() - 0.5)), \
            tc.Netlink(timeout=max(1.0, min(10.0, timeout()))) as nl, \
            nft.Nft(timeout=max(1.0, min(10.0, timeout()))) as marks:
        rec = Reconciler(s, kvm_dir=paths.kvm_dir, state_dir=paths.state_dir, nl=nl,
                         nft=marks, sysfs=paths.sysfs_root)
        rec.stream = lambda: tc.Netlink(timeout=max(1.0, min(10.0, timeout())))
        yield rec, classifier.describe(mode, why, classifier.probe(paths.run_dir))


def _legacy(settings: Mapping[str, Any], paths: Paths, timeout: Any) -> tuple[list[str],
                                                                             list[str]]:
    """Once per boot: remove the iptables rules of hookpack's earlier classifier.

    Under the node's shaping lock, which the ``iptables-restore`` child inherits: a hook
    killed while the child still commits keeps the next run out until the child exits.
    """
    from hookpack.actions.shaping import classifier, legacy
    from hookpack.locks import node_lock

    if legacy.done_this_boot(paths.run_dir, classifier.kernel_key()):
        return [], []  # the usual case: no lock taken twice per run
    with node_lock(paths.run_dir, LOCK, max(0.5, timeout() - 0.5)):
        return legacy.cleanup_once(paths.run_dir, str(settings["iptables_backend"]),
                                   classifier.kernel_key(),
                                   timeout=max(1.0, min(10.0, timeout() - 1.0)))


def reconcile(settings: Mapping[str, Any], paths: Paths, instances: Iterable[str] | None, *,
              tags: Mapping[str, Iterable[str]] | None = None, clear: bool = False,
              dry_run: bool = False, timeout: Any = lambda: 60.0) -> Report:
    """Plan (and unless ``dry_run`` apply) for ``instances`` (None: the whole node)."""
    from hookpack.actions.shaping.tc import NetlinkLost

    start = time.perf_counter()
    report = Report()
    old: tuple[list[str], list[str]] = ([], [])
    if not dry_run:
        old = _legacy(settings, paths, timeout)
        if old[0] and instances is not None and not clear:
            instances = None  # the old rules' classes: the whole node is renumbered
    lost: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        try:
            # after a loss, fewer requests per sendmsg: fewer replies queued at once
            _attempt(report, settings, paths, instances, tags, clear, dry_run, timeout,
                     chunk=max(1, 200 // 8 ** (attempt - 1)))
            break
        except NetlinkLost as err:
            # the kernel did some of the batch and its replies are gone: observe again
            # (a fresh socket, the lock taken again) and finish from what is there
            lost.append(str(err))
            if attempt == ATTEMPTS or timeout() < 1.0:
                report.failures.append(f"{err}, {attempt} time(s): state re-observed "
                                       "but not finished; run `hookpack shaping apply "
                                       "--all`")
                break
    if lost:
        report.notes.append(f"{lost[0]}: re-observed and finished ({len(lost)} retry)"
                            if not report.failures else lost[-1])
    report.changes[:0] = old[0]
    report.notes[:0] = old[1]
    report.ms = (time.perf_counter() - start) * 1000
    return report


ATTEMPTS = 3


def _attempt(report: Report, settings: Mapping[str, Any], paths: Paths,
             instances: Iterable[str] | None, tags: Mapping[str, Iterable[str]] | None,
             clear: bool, dry_run: bool, timeout: Any, chunk: int) -> None:
    """One observe -> plan -> apply; the counters add up over attempts."""
    with _session(settings, paths, timeout) as (rec, why):
        rec.nl.chunk = chunk
        if dry_run:
            rec.stream = None  # a plan writes nothing
        try:
            report.classifier = why
            plan = rec.plan(None if instances is None else list(instances), tags=tags,
                            clear=clear)
            report.kernel = rec.kernel
            report.policies = plan.policies
            report.changes = report.changes + [c for c in plan.changes
                                               if c not in report.changes]
            report.escalated = plan.escalated
            report.failures = list(plan.refused)
            if not dry_run and not plan.empty:
                report.failures += rec.apply(plan)
            report.notes = plan.notes
        finally:
            rec.settle()
            report.netlink_writes += rec.nl.writes + rec.streamed_writes
            report.nft_writes += rec.nft.writes


# ---- CLI --------------------------------------------------------------------------------


def add_cli(sub: Any) -> None:
    from hookpack.confirm import add_yes_arg

    p = sub.add_parser("shaping", help="per-VM traffic shaping (show, plan, apply, clear)")
    actions = p.add_subparsers(metavar="ACTION")
    for verb, helptext in (("show", "what hookpack has in the kernel, per tap"),
                           ("plan", "what apply would change (writes nothing)"),
                           ("apply", "bring the kernel in step (INSTANCE, or --all)"),
                           ("clear", "remove hookpack's shaping (INSTANCE, or --all)"),
                           ("doctor", "kernel and firewall facts shaping depends on")):
        q = actions.add_parser(verb, help=helptext)
        add_config_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if verb in ("plan", "apply", "clear", "show"):
            q.add_argument("instance", nargs="?", help="one instance (default: all)")
        if verb in ("plan", "apply", "clear"):
            q.add_argument("--all", action="store_true", help="every instance on this node")
        if verb == "clear":
            add_yes_arg(q)
        if verb == "doctor":
            q.add_argument("--refresh", action="store_true", help="probe the kernel again")
        q.set_defaults(handler=_cli, verb=verb)


def _load(ns: argparse.Namespace) -> tuple[Mapping[str, Any], Paths, bool]:
    from hookpack.config import load

    cfg = load(ns)
    settings = cfg.section("shaping", SETTINGS)
    return settings, Paths.from_config(cfg), bool(settings["enabled"])


def _cli(ns: argparse.Namespace) -> int:
    settings, paths, enabled = _load(ns)
    if ns.verb == "doctor":
        return _doctor(ns, settings, paths)
    if ns.verb in ("plan", "apply", "clear") and bool(ns.all) == bool(ns.instance):
        raise BadInput(f"shaping {ns.verb}: name one INSTANCE or --all")
    if ns.verb == "clear" and ns.all:
        from hookpack.confirm import confirm

        confirm("shaping clear --all: remove hookpack's shaping of every instance on this "
                "node", ns.yes)
    if ns.verb == "apply" and not enabled:
        print("shaping: disabled in the configuration ([shaping] enabled = false); "
              "nothing done")
        return 0
    instances = [_name(ns.instance)] if getattr(ns, "instance", None) else None
    tags, tag_notes = ({}, []) if ns.verb not in ("apply", "plan") else \
        current_tags(paths, instances)
    report = reconcile(settings, paths, instances, clear=ns.verb == "clear",
                       dry_run=ns.verb in ("plan", "show"), tags=tags or None)
    report.notes[:0] = tag_notes
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
              f"{report.netlink_writes} netlink write(s), {report.nft_writes} "
              f"nf_tables transaction(s), {report.ms:.0f} ms ({report.classifier})")
    return 1 if report.failures else 0


def current_tags(paths: Paths, instances: list[str] | None, timeout: float = 1.0
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """The instances' tags as Ganeti has them now (Ganeti runs no hook for tag changes),
    asked through confd; on a machine outside a cluster nothing is asked and the tags
    stored at the last hook apply. A failure is a note, never an error: the stored tags
    apply then."""
    from hookpack import confd
    from hookpack.actions.shaping.reconcile import read_nics

    if not confd.in_cluster(paths.ganeti_data_dir):
        return {}, []
    names = sorted(read_nics(paths.kvm_dir, instances)[0])
    if not names:
        return {}, []
    try:
        tags, notes = confd.instance_tags(paths.kvm_dir, paths.ganeti_data_dir, names,
                                          timeout=timeout)
    except (confd.ConfdError, OSError) as err:
        return {}, [f"tags from the last hook (Ganeti not asked: {err})"]
    return tags, [f"{n} (tags from the last hook)" for n in notes]


def _name(text: str) -> str:
    from hookpack import validate

    return validate.instance_name(text)


def _show(ns: argparse.Namespace, report: Report) -> int:
    from hookpack.actions.shaping.model import format_rate

    k = report.kernel
    rows = []
    marks = k.marks.taps if k.marks else {}
    for mark in sorted(marks.values(), key=lambda m: (m.instance, m.nic, m.tap)):
        klass = k.classes.get(mark.value) if mark.value else None
        tap = k.taps.get(mark.tap)
        rows.append({
            "instance": mark.instance, "nic": mark.nic, "tap": mark.tap,
            "mark": f"{mark.value:#x}" if mark.value is not None else None,
            "class": f"{k.uplink_handle >> 16:x}:{mark.value:x}" if mark.value else None,
            "marked": mark.hooked and mark.value is not None,
            "egress": format_rate(klass.ceil) if klass else None,
            "ingress": format_rate(tap.klass.rate) if tap and tap.klass else None,
            "tap_exists": bool(tap and tap.ifindex),
        })
    data = {"uplink_qdisc": k.uplink_root, "classifier": report.classifier,
            "netdev_table": bool(k.marks and k.marks.table), "taps": rows,
            "pending_changes": report.changes, "notes": report.notes,
            "in_step": not report.changes and not report.failures}
    if ns.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"uplink qdisc: {k.uplink_root}; {report.classifier}")
    for row in rows:
        print(f"{row['instance']}/{row['nic']} {row['tap']}: mark {row['mark'] or '-'} "
              f"class {row['class'] or '-'} egress {row['egress'] or '-'} ingress "
              f"{row['ingress'] or '-'}"
              + ("" if row["marked"] else " (NOT MARKED: egress not classified)")
              + ("" if row["tap_exists"] else " (tap gone)"))
    for change in report.changes:
        print(f"out of step: {change}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _doctor(ns: argparse.Namespace, settings: Mapping[str, Any], paths: Paths) -> int:
    from hookpack.actions.shaping import classifier, leaf

    probe = classifier.probe(paths.run_dir, refresh=ns.refresh)
    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    leaves = leaf.probe(paths.run_dir, refresh=ns.refresh)
    leaf_kind, leaf_why = leaf.choose(str(settings["leaf_qdisc"]), paths.run_dir)
    facts = {
        "htb": probe.get("htb"), "nft_netdev": probe.get("nft_netdev"),
        "cls_bpf": probe.get("bpf"), "cls_fw": probe.get("fw"),
        "u32_mark": probe.get("u32_mark"),
        "probe_detail": "; ".join(d for d in (probe.get("nft_detail"), probe.get("bpf_detail"),
                                              probe.get("detail")) if d),
        "classifier": classifier.describe(mode, why, probe),
        "nic_modes": NIC_MODES,
        "sch_fq_codel": leaves.get("fq_codel"),
        "leaf_qdisc": f"{leaf_kind}: {leaf_why}",
        "uplink": settings["uplink"] or "(not configured)",
    }
    if ns.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:14} {value}")
        if not probe.get("nft_netdev"):
            print("warning: nf_tables netdev chains are not available: no frame can be "
                  "classified (load nf_tables, CONFIG_NF_TABLES_NETDEV)")
    return 0


def doctor(cfg: Any, paths: Paths) -> list[Any]:
    """`hookpack doctor` checks: HTB, the tap marks (nf_tables netdev), the mark -> class
    filter (cls_bpf / cls_fw), the uplink."""
    from hookpack.actions.shaping import classifier, tc
    from hookpack.doctor import FAIL, PASS, WARN, Check

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
    if probe.get("nft_netdev"):
        checks.append(Check("shaping marks", PASS, "nf_tables netdev ingress chains (probed): "
                            "every frame a tap receives is marked, any NIC mode"))
    else:
        checks.append(Check("shaping marks", FAIL, "no nf_tables netdev ingress chain "
                            f"({probe.get('nft_detail') or probe.get('error') or '?'}): no "
                            "VM frame can be classified", "load nf_tables (`modprobe "
                            "nf_tables`; CONFIG_NF_TABLES_NETDEV); then `hookpack shaping "
                            "doctor --refresh`"))
    mode, why = classifier.choose(str(settings["classifier"]), paths.run_dir)
    if not probe.get(mode):
        checks.append(Check("shaping classifier", FAIL, f"cls_{mode}: {why}",
                            "set shaping.classifier = \"auto\", or load cls_bpf "
                            "(`modprobe cls_bpf`)"))
    else:
        checks.append(Check("shaping classifier", PASS,
                            f"{classifier.describe(mode, why, probe)}; u32 mark match: "
                            f"{probe.get('u32_mark')}"))
    from hookpack.actions.shaping import leaf

    leaf_kind, leaf_why = leaf.choose(str(settings["leaf_qdisc"]), paths.run_dir)
    if leaf_kind == "default":
        checks.append(Check("shaping leaf qdisc", WARN, "HTB's own pfifo under every class: a "
                            "saturated class queues up to 1000 packets (1.2 s at 10 Mbit/s)",
                            "set shaping.leaf_qdisc = \"auto\""))
    else:
        checks.append(Check("shaping leaf qdisc", PASS, f"{leaf_kind} ({leaf_why})"))
    checks.append(_modes_check(paths))
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
        from hookpack.actions.shaping.observe import root_state

        obj = reply.objects[0] if reply.objects else None
        state = root_state(obj, int(str(settings["handle"]), 16))
        if state == "foreign" and not settings["replace_foreign_qdisc"]:
            checks.append(Check("shaping uplink", WARN, f"{uplink} has a root qdisc hookpack "
                                f"did not create ({obj.kind if obj else '?'}): shaping refuses",
                                "remove it or set shaping.replace_foreign_qdisc = true"))
        else:
            checks.append(Check("shaping uplink", PASS, f"{uplink} root qdisc: {state}"))
    return checks


def _modes_check(paths: Paths) -> Any:
    """NIC modes: which are shaped; the running NICs in a refused mode, by name."""
    from hookpack.actions.shaping.reconcile import read_nics, refused_mode
    from hookpack.doctor import PASS, WARN, Check

    nics, _notes = read_nics(paths.kvm_dir)
    refused = [f"{n.tap} ({n.instance}/{n.index})" for group in nics.values() for n in group
               if refused_mode(n.tap, paths.sysfs_root)]
    if refused:
        return Check("shaping nic modes", WARN, f"{len(refused)} NIC(s) on Open vSwitch are "
                     f"not shaped: {', '.join(refused[:5])}", "use bridged or routed NICs "
                     "for instances that must be shaped")
    return Check("shaping nic modes", PASS, NIC_MODES)


# -- hookpack status / metrics ------------------------------------------------------------

def status(cfg: Any, paths: Paths, instance_names: list[str]) -> dict[str, Any]:
    """`hookpack status`: per tap, the wanted rate vs the kernel's class and counters."""
    from hookpack.actions.shaping import status as sstatus
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
    from hookpack.actions.shaping import status as sstatus
    from hookpack.metrics import Sample

    settings = cfg.section("shaping", SETTINGS)
    views = sstatus.observe(settings, paths.kvm_dir, paths.state_dir, None)
    samples: list[Sample] = []
    # Per tap only: each tap's counters reset on their own (a tap is recreated on
    # migrate/reboot), so per-instance sums belong in PromQL (sum by ganeti_instance of
    # rate()). `ganeti_instance`, not `instance`: Prometheus sets that label itself.
    for name, taps in sorted(views.items()):
        for tv in taps:
            for cv in tv.classes:
                if cv.counters is None:
                    continue
                labels = {"ganeti_instance": name, "nic": str(tv.nic), "tap": tv.tap,
                          "direction": cv.direction}
                for field, value in (("bytes", cv.counters.bytes),
                                     ("packets", cv.counters.packets),
                                     ("drops", cv.counters.drops),
                                     ("overlimits", cv.counters.overlimits)):
                    samples.append(Sample(f"hookpack_shaping_tap_{field}_total", value, labels,
                                          _TAP_HELP[field], "counter"))
                samples.append(Sample("hookpack_shaping_tap_rate_bytes_per_second",
                                      cv.ceil or 0, labels,
                                      "Limit (HTB ceil) of the tap's class in the kernel."))
    return samples


_TAP_HELP = {
    "bytes": "Bytes sent through the tap's HTB class (egress: VM -> world on the uplink; "
             "ingress: world -> VM on the tap).",
    "packets": "Packets sent through the tap's HTB class.",
    "drops": "Packets the tap's HTB class dropped.",
    "overlimits": "Times the tap's HTB class was over its rate (packets delayed).",
}

"""observe -> desired -> plan -> apply, for one instance (a hook) or the whole node.

Desired state = the taps in Ganeti's KVM runtime dir (``nic/<instance>/<index>`` holds
the tap name) x each instance's policy. The plan is the smallest list of netlink
requests and iptables-restore lines that turns what the kernel has into that; a second
run plans nothing and writes nothing. Objects are created or changed in place (an HTB
class "change", an fw filter "replace"), never deleted and re-added. Only hookpack's
objects are looked at: its HTB qdisc (handle ``major:``) on the uplink and on taps, the
classes and fw filters under it, and the rules in its own mangle chain.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hookpack import debugpoints, validate
from hookpack.errors import ActionError, BadInput, ConfigError
from hookpack.shaping import tc
from hookpack.shaping.leaf import leaf_for
from hookpack.shaping.model import (
    INSTANCE_BIT,
    MIN_RATE,
    MINOR_HOST,
    MINOR_ROOT,
    PRIO_VM,
    TAP_MINOR,
    ClassParams,
    allocate_minors,
    class_params,
    format_rate,
    instance_minor,
    parse_rate,
    qdisc_r2q,
    uplink_classes,
    vm_class,
)
from hookpack.shaping.netfilter import Netfilter, Rule, Scope, changes
from hookpack.shaping.observe import Kernel, observe, observe_rules
from hookpack.shaping.policy import Defaults, Policy, PolicyStore, from_tags

# the longest instance name a rule comment "hookpack:<instance>:<nic>" can carry
# (xt_comment: 255 characters)
MAX_LABEL_NAME = 255 - len("hookpack:") - len(":63")
OVERLAP_LINES = 64  # rule lines up to which iptables-restore overlaps the netlink work
DUMP_AT = 32  # read-backs on one device from which one dump replaces the gets


@dataclass(frozen=True)
class Settings:
    uplink: str
    major: int
    mtu: int
    uplink_rate: int
    classifier: str  # "fw" | "classify" (already chosen)
    fw_prio: int
    fw_mask: int
    ingress: bool
    families: tuple[int, ...]
    replace_foreign_qdisc: bool
    defaults: Defaults
    host_rate: int = 0  # 0: uplink_rate / 10
    guaranteed_rate: int = 1_000_000 // 8
    leaf: str = "default"  # "fq_codel" | "bfifo" | "default" (already chosen)
    leaf_delay_ms: int = 10

    @classmethod
    def from_config(cls, s: Mapping[str, Any], classifier: str,
                    leaf: str = "default") -> Settings:
        if not s.get("uplink"):
            raise ConfigError("no uplink configured: set shaping.uplink to the public "
                              "interface the instances' traffic leaves by (not the bridge)",
                              key="shaping.uplink")
        try:
            uplink = validate.interface_name(str(s["uplink"]))
            uplink_rate = parse_rate(str(s["uplink_rate"]))
            host_rate = parse_rate(str(s["host_rate"])) if s.get("host_rate") \
                else max(MIN_RATE, uplink_rate // 10)
            guaranteed = parse_rate(str(s.get("guaranteed_rate") or "1mbit"))
        except BadInput as err:
            raise ConfigError(str(err), key="shaping") from None
        families = (4, 6) if s["ipv6"] else (4,)
        return cls(uplink, int(str(s["handle"]), 16), int(s["mtu"]), uplink_rate, classifier,
                   int(s["fw_prio"]), int(s["fw_mask"]), bool(s["shape_ingress"]), families,
                   bool(s["replace_foreign_qdisc"]), Defaults.from_settings(s),
                   min(host_rate, uplink_rate), guaranteed, leaf,
                   int(s.get("leaf_delay_ms") or 10))


@dataclass(frozen=True)
class Nic:
    instance: str
    index: int
    tap: str


def read_nics(kvm_dir: Path, only: Iterable[str] | None = None
              ) -> tuple[dict[str, list[Nic]], list[str]]:
    """The NICs of the instances running here: ``<kvm_dir>/nic/<instance>/<index>``."""
    base = str(kvm_dir / "nic")
    notes: list[str] = []
    out: dict[str, list[Nic]] = {}
    if only is None:
        try:
            names = sorted(e.name for e in os.scandir(base) if e.is_dir())
        except OSError:
            names = []
    else:
        names = sorted(set(only))
    for name in names:
        try:
            validate.instance_name(name)
        except BadInput as err:
            notes.append(str(err))
            continue
        nics: list[Nic] = []
        folder = os.path.join(base, name)
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            entries = []
        for entry in entries:
            try:
                idx = validate.device_index(entry, "NIC index")
                with open(os.path.join(folder, entry)) as handle:
                    tap = validate.interface_name(handle.read().strip())
            except BadInput as err:
                notes.append(f"{name}: {entry}: {err}")
                continue
            except OSError:
                continue  # removed while we read: the instance is stopping
            nics.append(Nic(name, idx, tap))
        if nics or only is not None:
            out[name] = nics
    return out, notes


@dataclass
class Op:
    request: tc.Request
    tap: str | None = None  # tap-side requests: a vanished tap is skipped, not a failure
    ok: frozenset[int] = frozenset()  # errors that mean "already done"
    # what the kernel must echo back (the request carries NLM_F_ECHO); ``get`` reads it
    # back when no echo came
    check: Any = None
    get: tc.Request | None = None


@dataclass
class Plan:
    first: list[Op] = field(default_factory=list)  # qdiscs, classes, filters
    nf: dict[int, list[str]] = field(default_factory=dict)
    last: list[Op] = field(default_factory=list)  # deletes (after the rules are gone)
    verify: list[tuple[tc.Request, Any]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)  # classes re-made under a new parent
    refused: list[str] = field(default_factory=list)  # instances that cannot be shaped
    policies: dict[str, Policy] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.first or self.last or any(self.nf.values()))


def same_class(seen: tc.HtbParams | None, want: ClassParams) -> bool:
    if seen is None:
        return False
    slack = want.rate * 64 // 10**9 + 2  # buffers travel as 64 ns ticks
    cslack = want.ceil * 64 // 10**9 + 2
    return (seen.rate == want.rate and seen.ceil == want.ceil and seen.quantum == want.quantum
            and seen.prio == want.prio and abs(seen.burst - want.burst) <= slack
            and abs(seen.cburst - want.cburst) <= cslack)


def _htb(p: ClassParams) -> tc.HtbParams:
    return tc.HtbParams(p.rate, p.ceil, p.burst, p.cburst, p.quantum, p.prio)


@dataclass(frozen=True)
class LeafCheck:
    """A leaf qdisc to read back after the apply: what it should be."""

    leaf: tc.Leaf


class Reconciler:
    def __init__(self, settings: Settings, *, kvm_dir: Path, state_dir: Path,
                 nl: tc.Netlink, nf: Netfilter) -> None:
        self.s = settings
        self.kvm_dir = kvm_dir
        self.store = PolicyStore(state_dir)
        self.nl = nl
        self.nf = nf
        self.kernel: Kernel | None = None
        self._unechoed: list[tuple[tc.Request, Any]] = []
        self._mismatched: list[str] = []

    # -- policy ---------------------------------------------------------------------------
    def policy(self, instance: str, tags: Iterable[str] | None) -> Policy:
        if tags is not None:
            self.store.save(instance, tags)
            return from_tags(tags, self.s.defaults)
        return from_tags(self.store.load(instance), self.s.defaults)

    # -- plan -----------------------------------------------------------------------------
    def plan(self, instances: Iterable[str] | None, *, tags: Mapping[str, Iterable[str]]
             | None = None, clear: bool = False) -> Plan:
        """``instances`` None: the whole node. ``clear``: desired state is nothing."""
        s = self.s
        plan = Plan()
        full = instances is None
        scope = None if full else set(instances or ())
        nics, notes = read_nics(self.kvm_dir, None if full else scope)
        plan.notes += notes
        for name in sorted(nics):
            if len(name) > MAX_LABEL_NAME and nics[name] and not clear:
                plan.refused.append(
                    f"{name}: not shaped: the name has {len(name)} characters, the rule "
                    f"comment that links its taps to their classes holds {MAX_LABEL_NAME} "
                    "(iptables comment: 255 with the hookpack:...:N frame)")
                nics[name] = []
        if clear:
            nics = {name: [] for name in nics}
        desired_taps = {n.tap: n for group in nics.values() for n in group}
        seen_nf = observe_rules(self.nf, None if full else Scope(
            frozenset(scope or ()), frozenset(desired_taps)))

        def in_scope(rule: Rule) -> bool:
            return full or rule.instance in (scope or ()) or rule.tap in desired_taps

        scoped_rules = {f: [r for r in o.rules if in_scope(r)] for f, o in seen_nf.items()}
        out_rules = [r for o in seen_nf.values() for r in o.rules if not in_scope(r)]
        other_minors = {m for o in seen_nf.values() for m in o.other_minors}
        for family, seen in seen_nf.items():
            if seen.foreign:
                plan.notes.append(f"IPv{family} chain has {len(seen.foreign)} rule(s) "
                                  "hookpack did not write: left alone")
        # which taps exist right now (a vanished tap is skipped with a note)
        index = {tap: tc.ifindex(tap) for tap in desired_taps}
        existing = {tap for tap, i in index.items() if i is not None}
        for tap in sorted(set(desired_taps) - existing):
            gone = desired_taps[tap]
            plan.notes.append(f"{tap} ({gone.instance}/{gone.index}) does not exist: skipped")
        kept: dict[str, int] = {}
        for rules in scoped_rules.values():
            for r in rules:
                nic = desired_taps.get(r.tap)
                if nic and nic.instance == r.instance and nic.index == r.nic \
                        and r.tap not in kept:
                    kept[r.tap] = r.value
        taken = {r.value for r in out_rules} | other_minors
        minors = allocate_minors(existing, kept, taken)
        if s.classifier == "fw":
            bad = [m for m in minors.values() if m & s.fw_mask != m]
            if bad:
                raise ActionError(f"class ids {bad[:3]} do not fit shaping.fw_mask")
        old_minors = {r.value for rules in scoped_rules.values() for r in rules}
        rule_taps = {r.tap for rules in scoped_rules.values() for r in rules}
        # policies (before observing: an instance's parent class is in scope too)
        for name in nics:
            plan.policies[name] = self.policy(name, (tags or {}).get(name))
            plan.notes += [f"{name}: {note}" for note in plan.policies[name].notes]
        groups = _instance_groups(existing, desired_taps, minors)
        old_groups: dict[str, set[int]] = {}
        for rules in scoped_rules.values():
            for r in rules:
                old_groups.setdefault(r.instance, set()).add(r.value)
        parent_minors = {instance_minor(m) for m in (*groups.values(), *old_groups.values())
                         if m}
        k = observe(self.nl, seen_nf, uplink=s.uplink, major=s.major, fw_prio=s.fw_prio,
                    taps={t: index[t] if t in index else tc.ifindex(t)
                          for t in existing | rule_taps},
                    minors=None if full else set(minors.values()) | old_minors | parent_minors,
                    full=full)
        self.kernel = k
        if k.uplink_ifindex is None:
            raise ActionError(f"uplink {s.uplink} does not exist in this network namespace")
        up = k.uplink_ifindex
        parent_ok = k.uplink_root == "ours"
        clearing_all = clear and full
        old_layout = parent_ok and k.uplink_default != MINOR_HOST
        if old_layout and not full and not clear:
            # the uplink's qdisc predates the root/host classes: rebuilding it drops
            # every instance's class, so the whole node is reconciled
            return self.plan(None, tags=tags)
        # uplink: qdisc, root class (uplink_rate), host class (host_rate, served first)
        # the uplink's qdisc is made only when a tap needs it (a stop hook on a node with
        # nothing shaped writes nothing); once it is ours its base classes are kept right
        needs_qdisc = bool(existing) and not clear
        if (needs_qdisc or parent_ok) and not clearing_all:
            if k.uplink_root == "foreign" and not s.replace_foreign_qdisc:
                raise ActionError(
                    f"uplink {s.uplink} has a root qdisc hookpack did not create "
                    f"({k.uplink_kind} {tc.fmt_handle(k.uplink_handle)}); refusing to replace "
                    "it (set shaping.replace_foreign_qdisc = true to allow)")
            if old_layout:
                plan.last.append(Op(tc.del_root_qdisc(up, s.major, f"qdisc on {s.uplink}"),
                                    ok=frozenset({errno.ENOENT, errno.EINVAL})))
                plan.changes.append(f"{s.uplink}: htb qdisc {s.major:x}: rebuilt with the "
                                    "root and host classes")
            if not parent_ok or old_layout:
                r2q = qdisc_r2q(s.uplink_rate, s.mtu)
                plan.first.append(Op(tc.new_qdisc(up, s.major, r2q, MINOR_HOST,
                                                  f"qdisc on {s.uplink}")))
                if not old_layout:
                    plan.changes.append(f"{s.uplink}: htb qdisc {s.major:x}: created "
                                        f"(replacing {k.uplink_kind})")
                k.classes.clear()
                k.parents.clear()
                k.leaves.clear()
                k.filters.clear()
            root, host = uplink_classes(s.uplink_rate, s.host_rate, s.mtu)
            changed = self._plan_class(plan, k, up, MINOR_ROOT, 0, root,
                                       f"root class on {s.uplink}")
            changed |= self._plan_class(plan, k, up, MINOR_HOST, MINOR_ROOT, host,
                                        f"host class on {s.uplink}")
            changed |= self._plan_leaf(plan, up, tc.handle(s.major, MINOR_HOST),
                                       k.leaves.get(MINOR_HOST), host,
                                       f"leaf of the host class on {s.uplink}")
            if changed:
                plan.changes.append(f"{s.uplink}: root class {format_rate(root.rate)}, host "
                                    f"class {format_rate(host.rate)}")
        # per instance (egress_scope instance): one parent class over its NICs' classes
        parents: dict[str, int] = {}
        for name, group in sorted(groups.items()):
            pol = plan.policies[name]
            if pol.scope != "instance" or not group:
                continue
            pmin = instance_minor(group)
            parents[name] = pmin
            want = vm_class(pol.egress, s.guaranteed_rate, s.mtu)
            if self._plan_class(plan, k, up, pmin, MINOR_ROOT, want,
                                f"instance class for {name}"):
                plan.changes.append(f"{name}: instance egress {format_rate(want.ceil)} "
                                    f"over {len(group)} NIC(s)")
        # per tap
        want_rules: dict[int, set[Rule]] = {f: set() for f in seen_nf}
        for tap in sorted(existing):
            n = desired_taps[tap]
            pol = plan.policies[n.instance]
            minor = minors[tap]
            what: list[str] = []
            pmin = parents.get(n.instance, MINOR_ROOT)
            if pmin == MINOR_ROOT:
                eg = vm_class(pol.egress, s.guaranteed_rate, s.mtu)
            else:  # a share of the instance's guarantee, up to the instance's limit
                share = max(MIN_RATE, min(pol.egress, s.guaranteed_rate)
                            // len(groups[n.instance]))
                eg = class_params(share, s.mtu, pol.egress, PRIO_VM)
            cid = tc.handle(s.major, minor)
            if self._plan_class(plan, k, up, minor, pmin, eg, f"class for {tap}"):
                what.append(f"egress {format_rate(eg.ceil)}")
            if self._plan_leaf(plan, up, cid, k.leaves.get(minor), eg, f"leaf for {tap}"):
                what.append(f"leaf {leaf_for(s.leaf, eg.ceil, s.mtu, s.leaf_delay_ms)}")
            if s.classifier == "fw":
                # the kernel reports no mask for the full 32 bits
                fw_want = (cid, s.fw_mask if s.fw_mask != 0xFFFFFFFF else None)
                moved = minor in plan.moved  # its filter is deleted with the class
                if k.filters.get(minor) != fw_want or moved:
                    plan.first.append(Op(tc.set_fw_filter(
                        up, s.major, s.fw_prio, minor, cid, s.fw_mask,
                        minor in k.filters and not moved, f"fw filter for {tap}")))
                    plan.verify.append((_get_filter(up, s, minor), fw_want))
                    what.append(f"fw filter {minor:#x}")
                rule = Rule(tap, n.instance, n.index, "mark", minor, mask=s.fw_mask)
            else:
                rule = Rule(tap, n.instance, n.index, "classify", minor, major=s.major)
            for fam in want_rules:
                want_rules[fam].add(rule)
            if s.ingress:
                what += self._plan_tap(plan, k, tap, class_params(pol.ingress, s.mtu))
            elif k.taps.get(tap) and k.taps[tap].root == "ours":
                what += self._drop_tap(plan, k, tap)
            if what:
                plan.changes.append(f"{tap} ({n.instance}/{n.index}): {', '.join(what)}")
        # rules
        for fam, seen in seen_nf.items():
            have = set(scoped_rules[fam])
            add = sorted(want_rules[fam] - have, key=lambda r: r.tap)
            delete = sorted(have - want_rules[fam], key=lambda r: r.tap)
            if clearing_all:
                lines = changes(seen, [], delete, want_chain=False) if seen.chain else []
            elif add or delete or (want_rules[fam] and not (seen.chain and seen.jumps)):
                lines = changes(seen, add, delete, want_chain=True)
            else:
                lines = []
            plan.nf[fam] = lines
            if lines and (add or delete):
                plan.changes.append(f"IPv{fam} rules: +{len(add)} -{len(delete)}")
            elif lines:
                plan.changes.append(f"IPv{fam} chain {'removed' if clearing_all else 'set up'}")
        # deletes: classes/filters no longer used; tap qdiscs of taps no longer shaped
        used = {minors[t] for t in existing} | set(parents.values()) | {MINOR_ROOT, MINOR_HOST}
        scoped = old_minors | parent_minors
        stale = (set(k.classes) if full else (scoped & set(k.classes))) - used
        stale_filters = (set(k.filters) if full else (old_minors & set(k.filters))) - used
        stale_filters |= {m for m in plan.moved if m in k.filters}
        if clearing_all:
            if parent_ok:
                plan.last.append(Op(tc.del_root_qdisc(up, s.major, f"qdisc on {s.uplink}"),
                                    ok=frozenset({errno.ENOENT, errno.EINVAL})))
                plan.changes.append(f"{s.uplink}: htb qdisc {s.major:x}: removed")
        else:
            for mark in sorted(stale_filters):
                plan.last.append(Op(tc.del_fw_filter(up, s.major, s.fw_prio, mark,
                                                     f"fw filter {mark:#x}"),
                                    ok=frozenset({errno.ENOENT})))
            # children before parents: a class with children cannot be deleted
            for minor in [*plan.moved, *sorted(stale, key=lambda m: (m & INSTANCE_BIT, m))]:
                plan.last.append(Op(tc.del_class(up, s.major, minor,
                                                 f"class {s.major:x}:{minor:x}"),
                                    ok=frozenset({errno.ENOENT})))
            if stale or stale_filters:
                plan.changes.append(f"{s.uplink}: {len(stale)} class(es), "
                                    f"{len(stale_filters)} filter(s) removed")
        for tap in sorted(rule_taps - existing):
            st = k.taps.get(tap)
            if st and st.root == "ours":
                dropped = self._drop_tap(plan, k, tap)
                plan.changes.append(f"{tap}: {', '.join(dropped)}")
        if full:
            for where, name in sorted(k.stray_tap_qdiscs.items()):
                plan.last.append(Op(tc.del_root_qdisc(where, s.major, f"qdisc on {name}"),
                                    tap=name, ok=frozenset({errno.ENOENT, errno.EINVAL})))
                plan.changes.append(f"{name}: leftover htb qdisc removed")
        return plan

    def _plan_class(self, plan: Plan, k: Kernel, ifindex: int, minor: int, parent: int,
                    want: ClassParams, what: str) -> bool:
        """Create or change class ``minor`` under ``parent`` (a minor, 0: the qdisc);
        True when a write is planned. HTB cannot move a class: under another parent it
        is deleted (with the deletes, before the creations) and made again."""
        s = self.s
        if minor in k.classes and k.parents.get(minor, 0) != parent:
            plan.moved.append(minor)
            del k.classes[minor]
            k.leaves.pop(minor, None)
        elif same_class(k.classes.get(minor), want):
            return False
        req = tc.set_class(ifindex, s.major, minor, _htb(want), what, parent=parent)
        plan.first.append(Op(req.echoed(), check=want,
                             get=tc.get_class(ifindex, s.major, minor, what)))
        return True

    def _plan_leaf(self, plan: Plan, ifindex: int, classid: int, seen: tc.Leaf | None,
                   klass: ClassParams, what: str, tap: str | None = None) -> bool:
        """The class's leaf qdisc (fq_codel or a bounded fifo); True when written."""
        want = leaf_for(self.s.leaf, klass.ceil, self.s.mtu, self.s.leaf_delay_ms)
        if want is None or want.same(seen):
            return False
        plan.first.append(Op(tc.set_leaf(ifindex, classid, want, what).echoed(), tap=tap,
                             check=LeafCheck(want), get=tc.get_leaf(ifindex, classid, what)))
        return True

    def _plan_tap(self, plan: Plan, k: Kernel, tap: str, want: ClassParams) -> list[str]:
        s = self.s
        st = k.taps.get(tap)
        if st is None or st.ifindex is None:
            return []
        if st.root == "foreign" and not s.replace_foreign_qdisc:
            plan.notes.append(f"{tap} has a root qdisc hookpack did not create "
                              f"({st.root_kind}): to-VM direction not shaped")
            return []
        what = []
        if st.root != "ours":
            plan.first.append(Op(tc.new_qdisc(st.ifindex, s.major, qdisc_r2q(want.rate, s.mtu),
                                              TAP_MINOR, f"qdisc on {tap}"), tap=tap))
            st.klass = None
            st.leaf = None
        if not same_class(st.klass, want):
            req = tc.set_class(st.ifindex, s.major, TAP_MINOR, _htb(want), f"class on {tap}")
            plan.first.append(Op(req.echoed(), tap=tap, check=want,
                                 get=tc.get_class(st.ifindex, s.major, TAP_MINOR, req.what)))
            what.append(f"ingress {format_rate(want.rate)}")
        if self._plan_leaf(plan, st.ifindex, tc.handle(s.major, TAP_MINOR), st.leaf, want,
                           f"leaf on {tap}", tap=tap):
            what.append("to-VM leaf")
        return what

    def _drop_tap(self, plan: Plan, k: Kernel, tap: str) -> list[str]:
        st = k.taps[tap]
        assert st.ifindex is not None
        plan.last.append(Op(tc.del_root_qdisc(st.ifindex, self.s.major, f"qdisc on {tap}"),
                            tap=tap, ok=frozenset({errno.ENOENT, errno.EINVAL})))
        return ["to-VM qdisc removed"]

    # -- apply ----------------------------------------------------------------------------
    def apply(self, plan: Plan) -> list[str]:
        """Carry the plan out; returns failures (empty: all done and read back)."""
        failures: list[str] = []
        skipped: set[str] = set()
        # A small rule change (a hook's) runs in iptables-restore while the netlink
        # requests go out: the order between the two does not matter (a rule naming a
        # class that is not there yet, or no more, sends packets to the default class
        # for those milliseconds; fw filters go before their classes, both over
        # netlink). A big one (a full apply) runs after the creations: on a busy
        # 2-core node, overlapping two big restores with 3000 netlink requests is slower.
        small = sum(len(lines) for lines in plan.nf.values()) <= OVERLAP_LINES
        started = None
        debugpoints.point("shaping:start")
        # Deletions (stale classes, filters, tap qdiscs) go before the rules change: a
        # hook killed in between then leaves rules naming its instance, which its next
        # (instance-scoped) run sees and repairs. The other way round it would leave
        # classes no rule names, invisible to every later hook run (orphans until a
        # full apply).
        self._run(plan.last, failures, skipped, plan)
        debugpoints.point("shaping:deleted")
        if not small:
            self._run(plan.first, failures, skipped, plan)
            debugpoints.point("shaping:first")
        try:
            started = self.nf.restore_start(plan.nf)
        except (ActionError, OSError) as err:
            failures.append(f"rules: {err}")
        debugpoints.point("shaping:rules-started")
        try:
            if small:
                self._run(plan.first, failures, skipped, plan)
                debugpoints.point("shaping:first")
        finally:  # replies lost: the rules still finish before the caller re-observes
            if started is not None:
                try:
                    failures += self.nf.restore_finish(started)
                except ActionError as err:
                    failures.append(f"rules: {err}")
        debugpoints.point("shaping:rules-done")
        plan.verify += self._unechoed
        if not failures:
            failures += self._mismatched
        if plan.verify and not failures:
            checks = [(req, want) for req, want in plan.verify
                      if not any(t in req.what for t in skipped)]
            for (req, want), obj in zip(checks, self._read_back([c[0] for c in checks]),
                                        strict=True):
                if not _as_written(obj, want):
                    failures.append(f"{req.what}: not read back as written")
        debugpoints.point("shaping:end")
        return failures

    def _read_back(self, gets: list[tc.Request]) -> list[tc.TcObject | None]:
        """What the kernel has for each get. Many gets on one device and parent (a full
        apply's uplink classes or filters) are answered by one dump instead: the kernel
        packs a dump's answers into few messages, a get's each into its own."""
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i, req in enumerate(gets):
            groups.setdefault((req.type, req.ifindex, req.parent), []).append(i)
        out: list[tc.TcObject | None] = [None] * len(gets)
        single: list[int] = []
        for (mtype, ifindex, parent), idxs in groups.items():
            if len(idxs) < DUMP_AT:
                single += idxs
                continue
            found = {(o.handle, o.info if mtype == tc.RTM_GETTFILTER else 0): o
                     for o in self.nl.dump(mtype, ifindex,
                                           parent if mtype == tc.RTM_GETTFILTER else 0)}
            for i in idxs:
                key = (gets[i].handle, gets[i].info if mtype == tc.RTM_GETTFILTER else 0)
                out[i] = found.get(key)
        replies = self.nl.transact([gets[i] for i in single])
        for i, reply in zip(single, replies, strict=True):
            out[i] = reply.objects[0] if reply.objects else None
        return out

    def _run(self, ops: list[Op], failures: list[str], skipped: set[str], plan: Plan) -> None:
        ops = [op for op in ops if op.tap is None or op.tap not in skipped]
        for op, reply in zip(ops, self.nl.transact([op.request for op in ops]), strict=True):
            if not reply.error and op.check is not None:
                if not reply.objects and op.get is not None:
                    self._unechoed.append((op.get, op.check))  # read back after the apply
                elif not _as_written(reply.objects[-1] if reply.objects else None, op.check):
                    self._mismatched.append(f"{op.request.what}: not read back as written")
            if not reply.error or reply.error in op.ok:
                continue
            if op.tap is not None and (reply.error in tc.GONE or tc.ifindex(op.tap) is None):
                if op.tap not in skipped:  # one note per tap, however many of its ops failed
                    plan.notes.append(f"{op.tap} vanished during the change: skipped")
                skipped.add(op.tap)
                continue
            failures.append(str(tc.NetlinkError(reply.error, reply.extack, op.request.what)))


def _as_written(obj: tc.TcObject | None, want: Any) -> bool:
    """The object the kernel reports is what hookpack wrote: a class, a leaf, a filter."""
    if obj is None:
        return False
    if isinstance(want, ClassParams):
        return same_class(obj.htb_class(), want)
    if isinstance(want, LeafCheck):
        return want.leaf.same(obj.leaf())
    return bool(obj.fw() == want)


def _instance_groups(existing: Iterable[str], desired: Mapping[str, Nic],
                     minors: Mapping[str, int]) -> dict[str, set[int]]:
    """instance -> the class minors of its existing taps."""
    out: dict[str, set[int]] = {}
    for tap in existing:
        out.setdefault(desired[tap].instance, set()).add(minors[tap])
    return out


def _get_filter(up: int, s: Settings, mark: int) -> tc.Request:
    return tc.Request(tc.RTM_GETTFILTER, tc.NLM_F_ECHO, up, mark, tc.handle(s.major, 0),
                      tc.filter_info(s.fw_prio), tc.attr(tc.TCA_KIND, b"fw\0"),
                      f"fw filter {mark:#x}")

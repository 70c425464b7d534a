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

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hookpack import debugpoints, validate
from hookpack.actions.shaping import nft, tc
from hookpack.actions.shaping.leaf import leaf_for
from hookpack.actions.shaping.model import (
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
from hookpack.actions.shaping.observe import Kernel, TapMark, observe, observe_marks
from hookpack.actions.shaping.policy import Defaults, Policy, PolicyStore, from_tags
from hookpack.errors import ActionError, BadInput, ConfigError
from hookpack.record import field, record

if TYPE_CHECKING:  # a hook imports the stream only when it sends one
    from hookpack.actions.shaping.stream import OpStream

# the longest instance name a mark rule's comment "hookpack:<instance>:<nic>" can carry
# (an nf_tables rule comment: 254 bytes, see hookpack.actions.shaping.nft)
MAX_LABEL_NAME = nft.COMMENT_MAX - len("hookpack:") - len(":63")
DUMP_AT = 32  # read-backs on one device from which one dump replaces the gets


@record(frozen=True)
class Settings:
    uplink: str
    major: int
    mtu: int
    uplink_rate: int
    classifier: str  # "bpf" | "fw" (already chosen): mark -> class on the uplink
    fw_prio: int
    fw_mask: int
    ingress: bool
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
        return cls(uplink, int(str(s["handle"]), 16), int(s["mtu"]), uplink_rate, classifier,
                   int(s["fw_prio"]), int(s["fw_mask"]), bool(s["shape_ingress"]),
                   bool(s["replace_foreign_qdisc"]), Defaults.from_settings(s),
                   min(host_rate, uplink_rate), guaranteed, leaf,
                   int(s.get("leaf_delay_ms") or 10))


@record(frozen=True)
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
                tap = validate.interface_name(_read_small(os.path.join(folder, entry)).strip())
            except BadInput as err:
                notes.append(f"{name}: {entry}: {err}")
                continue
            except OSError:
                continue  # removed while we read: the instance is stopping
            nics.append(Nic(name, idx, tap))
        if nics or only is not None:
            out[name] = nics
    return out, notes


def _read_small(path: str) -> str:
    """A file of a few bytes, without a Python file object (1000 taps: 1000 files)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


OVS_DATAPATH = "ovs-system"  # the master device of every Open vSwitch port


def refused_mode(tap: str, sysfs: Path = Path("/sys")) -> str:
    """Why a tap's NIC mode is not shaped ("" when it is). Ganeti's `openvswitch` mode
    (the tap a port of Open vSwitch's datapath) is refused until it is tested: the
    marks would be set the same way, but nothing here proves that Open vSwitch hands
    the mark on to the uplink."""
    return refused_modes([tap], sysfs).get(tap, "")


OVS_REFUSED = "NIC mode openvswitch is refused (not tested with hookpack's marks)"


def refused_modes(taps: Iterable[str], sysfs: Path = Path("/sys")) -> dict[str, str]:
    """``refused_mode`` of many taps, from one listing: the datapath's ``lower_<port>``
    links name its ports (the kernel links both ends of a master and its port)."""
    try:
        ports = {e.name[len("lower_"):] for e in os.scandir(sysfs / "class" / "net" /
                                                            OVS_DATAPATH)
                 if e.name.startswith("lower_")}
    except OSError:
        return {}  # no Open vSwitch datapath here
    return {tap: OVS_REFUSED for tap in taps if tap in ports}


class Op(NamedTuple):  # a NamedTuple: a full apply makes 5000
    request: tc.Request
    tap: str | None = None  # tap-side requests: a vanished tap is skipped, not a failure
    ok: frozenset[int] = frozenset()  # errors that mean "already done"
    # what the kernel must echo back (the request carries NLM_F_ECHO); ``get`` reads it
    # back when no echo came
    check: Any = None
    get: tc.Request | None = None


@record
class Plan:
    first: list[Op] = field(default_factory=list)  # qdiscs, classes, filters
    nft: list[nft.Msg] = field(default_factory=list)  # one nf_tables transaction
    last: list[Op] = field(default_factory=list)  # deletes (after the rules are gone)
    verify: list[tuple[tc.Request, Any]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)  # classes re-made under a new parent
    refused: list[str] = field(default_factory=list)  # instances that cannot be shaped
    policies: dict[str, Policy] = field(default_factory=dict)
    escalated: str = ""  # why a hook reconciled the whole node

    @property
    def empty(self) -> bool:
        return not (self.first or self.last or self.nft)


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


@record(frozen=True)
class LeafCheck:
    """A leaf qdisc to read back after the apply: what it should be."""

    leaf: tc.Leaf


class Reconciler:
    def __init__(self, settings: Settings, *, kvm_dir: Path, state_dir: Path,
                 nl: tc.Netlink, nft: nft.Nft, sysfs: Path = Path("/sys")) -> None:
        self.s = settings
        self.kvm_dir = kvm_dir
        self.store = PolicyStore(state_dir)
        self.nl = nl
        self.nft = nft
        self.kernel: Kernel | None = None
        self._unechoed: list[tuple[tc.Request, Any]] = []
        self._mismatched: list[str] = []
        self.wanted_taps: set[str] = set()
        self.sysfs = sysfs
        self._sampled: set[tuple[int, bool, bytes]] = set()  # creations read back
        # set by an apply run: a whole-node run that makes the uplink's qdisc sends its
        # creations while it plans (hookpack.actions.shaping.stream)
        self.stream: Callable[[], tc.Netlink] | None = None
        self.streamed_writes = 0
        self._stream: OpStream | None = None  # the one sending now

    # -- policy ---------------------------------------------------------------------------
    def policy(self, instance: str, tags: Iterable[str] | None) -> Policy:
        if tags is not None:
            self.store.save(instance, tags)
            return from_tags(tags, self.s.defaults)
        return from_tags(self.store.load(instance), self.s.defaults)

    # -- plan -----------------------------------------------------------------------------
    def plan(self, instances: Iterable[str] | None, *, tags: Mapping[str, Iterable[str]]
             | None = None, clear: bool = False) -> Plan:
        """``instances`` None: the whole node. ``clear``: desired state is nothing.

        A hook (instance scope) that finds hookpack's base objects missing or changed
        (the uplink's qdisc, its classifier filter, the netdev table: a firewall reload
        or a hand-made ``tc qdisc del`` takes them and every class or mark with them)
        reconciles the whole node instead: every running instance is shaped again."""
        plan = self._plan(instances, tags=tags, clear=clear)
        if instances is not None and not clear and self.base_broken():
            why = self.base_broken()
            plan = self._plan(None, tags=tags, clear=False)
            plan.notes.insert(0, f"{why}: reconciled the whole node")
            plan.escalated = why
        return plan

    def settle(self) -> None:
        """Wait for the creations a plan already sends (a run that failed between plan
        and apply, or in the plan): nothing is left writing after the run."""
        with contextlib.suppress(Exception):
            self._finish_stream()

    def _finish_stream(self) -> list[tc.Reply]:
        """The replies of the creations sent while planning (none sent: none)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return []
        try:
            return stream.finish()
        finally:
            self.streamed_writes += stream.writes

    def base_broken(self) -> str:
        """Why the node-wide objects are not in step ("" when they are, or when none are
        wanted yet: nothing is shaped and nothing to shape)."""
        k = self.kernel
        if k is None or k.marks is None:
            return ""
        shaped = bool(k.marks.taps) or k.uplink_root == "ours"
        if not shaped and not self.wanted_taps:
            return ""
        if k.uplink_root != "ours":
            return f"uplink {self.s.uplink} has no hookpack qdisc"
        if k.uplink_default != MINOR_HOST:
            # rebuilding a qdisc of the earlier layout drops every instance's class
            return f"the qdisc on {self.s.uplink} predates the root and host classes"
        if not k.marks.table:
            return f"nf_tables table netdev {nft.TABLE} is missing"
        if self.s.classifier != "fw" and k.bpf != self.bpf_want():
            return f"the classifier filter on {self.s.uplink} is missing or changed"
        return ""

    def bpf_want(self) -> bytes:
        return tc.mark_program(self.s.major, self.s.fw_mask)

    def _plan(self, instances: Iterable[str] | None, *, tags: Mapping[str, Iterable[str]]
              | None = None, clear: bool = False) -> Plan:
        s = self.s
        plan = Plan()
        full = instances is None
        scope = None if full else set(instances or ())
        nics, notes = read_nics(self.kvm_dir, None if full else scope)
        plan.notes += notes
        for name in sorted(nics):
            if len(name) > MAX_LABEL_NAME and nics[name] and not clear:
                plan.refused.append(
                    f"{name}: not shaped: the name has {len(name)} characters, the mark "
                    f"rule's comment that links its taps to their classes holds "
                    f"{MAX_LABEL_NAME} (nf_tables comment: {nft.COMMENT_MAX} bytes with the "
                    "hookpack:...:N frame)")
                nics[name] = []
        if clear:
            nics = {name: [] for name in nics}
        desired_taps = {n.tap: n for group in nics.values() for n in group}
        marks = observe_marks(self.nft)

        def in_scope(m: TapMark) -> bool:
            return full or m.instance in (scope or ()) or m.tap in desired_taps

        scoped = {tap: m for tap, m in marks.taps.items() if in_scope(m)}
        taken = {m.value for m in marks.taps.values()
                 if not in_scope(m) and m.value is not None}
        # which taps exist right now (a vanished tap is skipped with a note)
        index = tc.ifindexes(desired_taps)
        existing = {tap for tap, i in index.items() if i is not None}
        for tap, refused in sorted(refused_modes(existing, self.sysfs).items()):
            if refused:
                n = desired_taps[tap]
                plan.notes.append(f"{tap} ({n.instance}/{n.index}): {refused}: not shaped")
                existing.discard(tap)
        self.wanted_taps = set(existing)
        for tap in sorted(set(desired_taps) - existing):
            gone = desired_taps[tap]
            plan.notes.append(f"{tap} ({gone.instance}/{gone.index}) does not exist: skipped")
        kept: dict[str, int] = {}
        for tap, m in scoped.items():
            nic = desired_taps.get(tap)
            if nic and nic.instance == m.instance and nic.index == m.nic and m.value:
                kept[tap] = m.value
        minors = allocate_minors(existing, kept, taken)
        bad = [m for m in minors.values() if m & s.fw_mask != m]
        if bad:
            raise ActionError(f"class ids {bad[:3]} do not fit shaping.fw_mask")
        # (a minor an out-of-scope tap also holds is that tap's class: never removed here)
        old_minors = {m.value for m in scoped.values() if m.value is not None} - taken
        # policies (before observing: an instance's parent class is in scope too)
        for name in nics:
            plan.policies[name] = self.policy(name, (tags or {}).get(name))
            plan.notes += [f"{name}: {note}" for note in plan.policies[name].notes]
        groups = _instance_groups(existing, desired_taps, minors)
        old_groups: dict[str, set[int]] = {}
        for m in scoped.values():
            if m.value is not None and m.instance:
                old_groups.setdefault(m.instance, set()).add(m.value)
        parent_minors = {instance_minor(m) for m in (*groups.values(), *old_groups.values())
                         if m}
        k = observe(self.nl, marks, uplink=s.uplink, major=s.major, fw_prio=s.fw_prio,
                    classifier=s.classifier,
                    taps={t: index[t] if t in index else tc.ifindex(t)
                          for t in existing | set(scoped)},
                    minors=None if full else set(minors.values()) | old_minors | parent_minors,
                    full=full)
        self.kernel = k
        if k.uplink_ifindex is None:
            raise ActionError(f"uplink {s.uplink} does not exist in this network namespace")
        up = k.uplink_ifindex
        self._sampled.clear()
        parent_ok = k.uplink_root == "ours"
        clearing_all = clear and full
        old_layout = parent_ok and k.uplink_default != MINOR_HOST
        # uplink: qdisc, root class (uplink_rate), host class (host_rate, served first),
        # the mark -> class filter
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
                if self.stream is not None and full and not old_layout and not plan.first:
                    # everything on the uplink is new: no deletion can clash with it
                    from hookpack.actions.shaping.stream import OpStream

                    self._stream = plan.first = OpStream(self.stream, self.nl.chunk)
                    debugpoints.point("shaping:stream")
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
                k.bpf = None
                k.other_kind = ""
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
            self._plan_classifier(plan, k, up)
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
        add_marks: list[tuple[str, int, int, str, nft.TapChains]] = []
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
            have = scoped.get(tap)
            if have is None or not have.sets(minor, s.fw_mask, n.instance, n.index):
                note = nft.comment(n.instance, n.index)
                if len(note.encode()) > nft.COMMENT_MAX:
                    plan.notes.append(f"{tap} ({n.instance}/{n.index}): instance name too "
                                      "long for the mark rule's comment: not shaped")
                    continue
                add_marks.append((tap, minor, s.fw_mask, note,
                                  have.chains if have is not None else nft.TapChains()))
                what.append(f"mark {minor:#x}")
            if s.ingress:
                what += self._plan_tap(plan, k, tap, class_params(pol.ingress, s.mtu))
            elif k.taps.get(tap) and k.taps[tap].root == "ours":
                what += self._drop_tap(plan, k, tap)
            if what:
                plan.changes.append(f"{tap} ({n.instance}/{n.index}): {', '.join(what)}")
        # marks: chains of taps no longer shaped here go
        stale_chains = sorted(set(scoped) - {a[0] for a in add_marks} - existing)
        if clearing_all:
            if marks.table:
                plan.nft = [nft.del_table()]
                plan.changes.append(f"nf_tables table netdev {nft.TABLE}: removed")
        else:
            plan.nft = nft.tap_batch(add_marks, [(t, scoped[t].chains) for t in stale_chains],
                                     table=not marks.table and bool(add_marks))
            if stale_chains:
                plan.changes.append(f"marks removed: {', '.join(stale_chains[:8])}"
                                    + (" ..." if len(stale_chains) > 8 else ""))
        # deletes: classes/filters no longer used; tap qdiscs of taps no longer shaped
        used = {minors[t] for t in existing} | set(parents.values()) | {MINOR_ROOT, MINOR_HOST}
        scoped_minors = old_minors | parent_minors
        stale = (set(k.classes) if full else (scoped_minors & set(k.classes))) - used
        stale_filters = (set(k.filters) if full else (old_minors & set(k.filters))) - used
        stale_filters |= {m for m in plan.moved if m in k.filters}
        if s.classifier != "fw":
            stale_filters = set()  # the whole fw filter went with _plan_classifier
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
        for tap in sorted(set(scoped) - existing):
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

    def _plan_classifier(self, plan: Plan, k: Kernel, up: int) -> None:
        """The uplink's mark -> class filter: one cls_bpf program (O(1) per packet), or
        cls_fw elements per mark (planned per tap). A filter of the other kind at
        ``fw_prio`` (hookpack's own, from another classifier setting) goes first."""
        s = self.s
        other = ("bpf" if k.bpf is not None else k.other_kind) if s.classifier == "fw" \
            else ("fw" if k.filters else k.other_kind)
        if other:
            plan.last.append(Op(tc.del_filter(up, s.major, s.fw_prio, other,
                                              f"{other} filter on {s.uplink}"),
                                ok=frozenset({errno.ENOENT, errno.EINVAL})))
            plan.changes.append(f"{s.uplink}: {other} filter removed")
            if other == "fw":
                k.filters.clear()
            elif other == "bpf":
                k.bpf = None
        if s.classifier == "fw":
            return
        want = self.bpf_want()
        if k.bpf != want:
            plan.first.append(Op(tc.set_bpf_filter(up, s.major, s.fw_prio, want,
                                                      k.bpf is not None,
                                                      f"bpf filter on {s.uplink}")))
            plan.verify.append((tc.get_bpf_filter(up, s.major, s.fw_prio,
                                                  f"bpf filter on {s.uplink}"), want))
            plan.changes.append(f"{s.uplink}: classifier cls_bpf (mark -> class)")

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
        self._add_checked(plan, req, minor not in k.classes, want,
                          lambda: tc.get_class(ifindex, s.major, minor, what))
        return True

    def _add_checked(self, plan: Plan, req: tc.Request, creates: bool, check: Any,
                     get: Callable[[], tc.Request], tap: str | None = None) -> None:
        """A class or leaf write, read back when it must be. A change always is (the
        kernel changes some fields in place, not all); of the creations alike (same
        message type, same options, on the uplink or on a tap) the first is: the kernel
        stores equal requests alike, and the chunk's closing ack proves each was done
        (an error would have come back instead). A 1000-tap apply then reads back a
        handful of objects, not 4000 echoes."""
        if creates:
            up = self.kernel.uplink_ifindex if self.kernel else None
            key = (req.type, req.ifindex == up, req.body)
            if key in self._sampled:
                plan.first.append(Op(req, tap=tap))
                return
            self._sampled.add(key)
        plan.first.append(Op(req.echoed(), tap=tap, check=check, get=get()))

    def _plan_leaf(self, plan: Plan, ifindex: int, classid: int, seen: tc.Leaf | None,
                   klass: ClassParams, what: str, tap: str | None = None) -> bool:
        """The class's leaf qdisc (fq_codel or a bounded fifo); True when written."""
        want = leaf_for(self.s.leaf, klass.ceil, self.s.mtu, self.s.leaf_delay_ms)
        if want is None:  # leaf_qdisc = "default": HTB's own pfifo
            if seen is None or seen.kind == "default":
                return False
            plan.first.append(Op(tc.del_leaf(ifindex, classid, what), tap=tap,
                                 ok=frozenset({errno.ENOENT})))
            return True
        if want.same(seen):
            return False
        self._add_checked(plan, tc.set_leaf(ifindex, classid, want, what),
                          seen is None or seen.kind == "default", LeafCheck(want),
                          lambda: tc.get_leaf(ifindex, classid, what), tap=tap)
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
            index = st.ifindex
            req = tc.set_class(index, s.major, TAP_MINOR, _htb(want), f"class on {tap}")
            self._add_checked(plan, req, st.klass is None, want,
                              lambda: tc.get_class(index, s.major, TAP_MINOR, req.what),
                              tap=tap)
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
        debugpoints.point("shaping:start")
        # Deletions (stale classes, filters, tap qdiscs) go before the marks change: a
        # hook killed in between then leaves mark chains naming its instance, which its
        # next (instance-scoped) run sees and repairs. The other way round it would leave
        # classes no mark names, invisible to every later hook run (orphans until a
        # full apply). A mark naming a class that is not there yet sends its frames to
        # the default class for those milliseconds.
        self._run(plan.last, failures, skipped, plan)
        debugpoints.point("shaping:deleted")
        self._marks(plan, failures, skipped)
        debugpoints.point("shaping:rules-done")
        self._run(plan.first, failures, skipped, plan)
        debugpoints.point("shaping:first")
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

    def _marks(self, plan: Plan, failures: list[str], skipped: set[str]) -> None:
        """The nf_tables transaction (all or nothing). A tap that vanished since the
        observation fails the whole batch: its messages are dropped and it runs again."""
        msgs = list(plan.nft)
        for _attempt in range(3):
            if not msgs:
                return
            try:
                result = self.nft.batch(msgs)
            except OSError as err:
                failures.append(f"marks: nf_tables: {err}")
                return
            if result.ok:
                return
            drop: set[str] = set()  # chains whose messages go
            fatal = []
            for m, code, text in result.errors:
                if m.tap is None or code not in (errno.ENOENT, errno.ENODEV):
                    fatal.append(str(nft.NftError(code, text, m.what)))
                elif m.type in (nft.DELCHAIN, nft.DELRULE) and m.tap not in self.wanted_taps:
                    # already gone (Linux < 6.16 deletes a base chain with its device)
                    drop.add(m.chain or "")
                elif tc.ifindex(m.tap) is None:
                    drop |= {x.chain for x in msgs if x.tap == m.tap and x.chain}
                    if m.tap not in skipped:
                        plan.notes.append(f"{m.tap} vanished during the change: skipped")
                    skipped.add(m.tap)
                else:
                    fatal.append(str(nft.NftError(code, text, m.what)))
            if fatal or not drop:
                failures += fatal[:3] or ["marks: nf_tables refused the batch"]
                return
            msgs = [m for m in msgs if m.chain is None or m.chain not in drop]
        failures.append("marks: nf_tables batch kept failing as taps vanished")

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
        if ops is self._stream:  # sent while planning: their replies
            replies = self._finish_stream()
        else:
            ops = [op for op in ops if op.tap is None or op.tap not in skipped]
            replies = self.nl.transact([op.request for op in ops])
        for op, reply in zip(ops, replies, strict=True):
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
    if isinstance(want, bytes):
        return bool(obj.bpf() == want)
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

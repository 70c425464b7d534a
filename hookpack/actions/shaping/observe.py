"""What the kernel has, limited to hookpack's own objects and to the reconcile's scope.

Instance scope (a hook): single gets for the instance's classes, filters and taps (and
the uplink's qdisc, default class and classifier filter), plus the chains and rules of
hookpack's nf_tables ``netdev`` table (two dumps: the mark rules are what link a tap to
its class). Node scope (``--all``): dumps of the uplink's classes and filters and of
every root qdisc, so leftovers of taps that vanished without a hook are found too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hookpack.actions.shaping import nft, tc
from hookpack.actions.shaping.model import MINOR_FIRST, MINOR_HOST, MINOR_ROOT, TAP_MINOR
from hookpack.record import field, record

_GONE = tc.TcObject(0, 0, 0, 0, "<gone>")


@record
class TapState:
    ifindex: int | None  # None: the device does not exist
    root: str = "none"  # "ours" | "default" | "foreign" | "none"
    root_kind: str = ""
    klass: tc.HtbParams | None = None
    leaf: tc.Leaf | None = None  # the qdisc under the tap's class (None: no class)


@record
class Kernel:
    uplink_ifindex: int | None = None
    uplink_root: str = "none"  # "ours" | "default" | "foreign" | "none"
    uplink_kind: str = ""
    uplink_handle: int = 0
    uplink_default: int = 0  # the default class minor of hookpack's uplink qdisc
    classes: dict[int, tc.HtbParams] = field(default_factory=dict)  # minor -> params
    parents: dict[int, int] = field(default_factory=dict)  # minor -> parent minor (0: root)
    leaves: dict[int, tc.Leaf] = field(default_factory=dict)  # minor -> its leaf qdisc
    filters: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # mark -> cls
    bpf: bytes | None = None  # the cls_bpf mark -> class filter at fw_prio
    other_kind: str = ""  # a filter of another kind at fw_prio (the other classifier's)
    taps: dict[str, TapState] = field(default_factory=dict)
    stray_tap_qdiscs: dict[int, str] = field(default_factory=dict)  # ifindex -> name/"?"
    marks: Marks | None = None
    full: bool = False


@record(frozen=True)
class TapMark:
    """One tap's chains in hookpack's netdev table: whose NIC, which mark, and whether
    the tap's frames go through it."""

    tap: str
    instance: str  # "" when the rule's comment is not hookpack's
    nic: int
    value: int | None  # None: not exactly one hookpack mark rule
    mask: int | None
    hooked: bool  # base chain on the tap's ingress, its one rule the jump to the record
    chains: nft.TapChains = field(default_factory=nft.TapChains)

    def sets(self, value: int, mask: int, instance: str, nic: int) -> bool:
        return (self.hooked and self.value == value and self.mask == mask
                and self.instance == instance and self.nic == nic)


@record
class Marks:
    table: bool = False
    taps: dict[str, TapMark] = field(default_factory=dict)  # chain (= tap) -> mark


def observe_marks(n: nft.Nft) -> Marks:
    """hookpack's netdev table: one dump of chains, one of rules. A tap's mark is read
    from its record chain (which outlives the tap), or from its base chain's own mark
    rule (the layout before the record chains)."""
    if not n.table_exists():
        return Marks()
    chains = n.chains()
    rules = n.marks()
    out = Marks(table=True)
    taps = {nft.record_tap(name) or name for name in chains}
    for tap in sorted(taps):
        out.taps[tap] = _tap_mark(tap, chains, rules)
    return out


def _tap_mark(tap: str, chains: Mapping[str, nft.Chain],
              rules: Mapping[str, list[nft.Mark]]) -> TapMark:
    record = nft.record_name(tap)
    base = chains.get(tap)
    have = nft.TapChains(record=record in chains, base=base is not None,
                         base_on_tap=base is not None and base.hooked_on(tap))
    in_base = rules.get(tap, [])
    jumps = len(in_base) == 1 and in_base[0].jump == record
    # the record's rule; without a record, a base chain's own mark rule (old layout)
    found = rules.get(record, []) if have.record else ([] if jumps else in_base)
    rule = found[0] if len(found) == 1 else None
    owner = nft.parse_comment(rule.comment) if rule else None
    instance, nic = owner if owner else ("", -1)
    return TapMark(tap, instance, nic, rule.value if rule else None,
                   rule.mask if rule else None,
                   have.base_on_tap and have.record and jumps, have)


def root_state(obj: tc.TcObject | None, major: int) -> str:
    if obj is None:
        return "default"  # builtin (noqueue) root: the kernel reports nothing
    if obj.kind == "htb" and obj.handle == tc.handle(major, 0):
        return "ours"
    if obj.handle >> 16 == 0:
        return "default"  # kernel-made root qdiscs have handle 0: (pfifo_fast, mq, noqueue)
    return "foreign"


def observe(nl: tc.Netlink, marks: Marks, *, uplink: str, major: int,
            fw_prio: int, classifier: str, taps: Mapping[str, int | None],
            minors: Iterable[int] | None, full: bool) -> Kernel:
    """``taps``: the taps in scope and their ifindex (None: gone); ``minors``: class
    minors in scope (None: all, node scope)."""
    k = Kernel(full=full, marks=marks)
    k.uplink_ifindex = tc.ifindex(uplink)
    tap_index = dict(taps)
    roots: dict[int, tc.TcObject | None] = {}
    leaves: dict[tuple[int, int], tc.Leaf] = {}  # (ifindex, class minor) -> leaf
    if full:
        # one dump of every qdisc: the uplink's, the taps', their leaves, and leftovers
        for qd in nl.dump(tc.RTM_GETQDISC):
            if qd.parent == tc.TC_H_ROOT:
                roots[qd.ifindex] = qd
            elif qd.parent >> 16 == major:
                leaves[(qd.ifindex, qd.parent & 0xFFFF)] = qd.leaf()
        known = {i for i in tap_index.values() if i is not None}
        for where, root in roots.items():
            if (root is not None and where not in known and where != k.uplink_ifindex
                    and root_state(root, major) == "ours"):
                k.stray_tap_qdiscs[where] = _ifname(where)
    else:
        wanted = [i for i in (k.uplink_ifindex, *tap_index.values()) if i is not None]
        gets = [tc.get_root_qdisc(i, f"root qdisc of if{i}") for i in wanted]
        for where, reply in zip(wanted, nl.transact(gets), strict=True):
            roots[where] = reply.objects[0] if reply.objects else None
            if reply.error in tc.GONE:
                roots[where] = _GONE
    if k.uplink_ifindex is not None:
        up_root = roots.get(k.uplink_ifindex)
        k.uplink_root = root_state(up_root, major)
        k.uplink_kind = up_root.kind if up_root else "noqueue"
        k.uplink_handle = up_root.handle if up_root else 0
        glob = up_root.htb_qdisc() if up_root is not None and up_root is not _GONE else None
        k.uplink_default = glob[1] if glob else 0
    ours: list[tuple[str, int]] = []
    for name, index in sorted(tap_index.items()):
        obj = roots.get(index) if index is not None else _GONE
        if index is None or obj is _GONE:
            k.taps[name] = TapState(None)
            continue
        state = TapState(index, root_state(obj, major), obj.kind if obj else "noqueue")
        k.taps[name] = state
        if state.root == "ours":
            ours.append((name, index))
    tap_cls = tc.handle(major, TAP_MINOR)
    if full:
        gets = [tc.get_class(i, major, TAP_MINOR, f"class of {n}") for n, i in ours]
        replies = nl.transact(gets)
        leaf_replies: list[tc.Reply | None] = [None] * len(ours)
    else:
        gets = [tc.get_class(i, major, TAP_MINOR, f"class of {n}") for n, i in ours]
        gets += [tc.get_leaf(i, tap_cls, f"leaf of {n}") for n, i in ours]
        both = nl.transact(gets)
        replies, leaf_replies = both[:len(ours)], list(both[len(ours):])
    for (name, index), reply, leaf in zip(ours, replies, leaf_replies, strict=True):
        if reply.objects:
            st = k.taps[name]
            st.klass = reply.objects[0].htb_class()
            if full:
                st.leaf = leaves.get((index, TAP_MINOR), tc.Leaf("default"))
            else:
                st.leaf = leaf.objects[0].leaf() if leaf and leaf.objects else None
    if k.uplink_root != "ours" or k.uplink_ifindex is None:
        return k
    up = k.uplink_ifindex
    parent = tc.handle(major, 0)
    if minors is None:
        for obj in nl.dump(tc.RTM_GETTCLASS, up):
            params = obj.htb_class()
            if params is not None and obj.handle >> 16 == major:
                minor = obj.handle & 0xFFFF
                k.classes[minor] = params
                k.parents[minor] = _parent_minor(obj, major)
                if params.level == 0:  # a leaf class: its qdisc, HTB's pfifo when not dumped
                    k.leaves[minor] = leaves.get((up, minor), tc.Leaf("default"))
        for obj in nl.dump(tc.RTM_GETTFILTER, up, parent):
            _filter(k, obj, fw_prio)
    else:
        wanted = sorted({MINOR_ROOT, MINOR_HOST, *minors})
        gets = [tc.get_class(up, major, m, f"class {major:x}:{m:x}") for m in wanted]
        gets += [tc.get_leaf(up, tc.handle(major, m), f"leaf of {major:x}:{m:x}")
                 for m in wanted]
        both = nl.transact(gets)
        for minor, reply, leaf in zip(wanted, both[:len(wanted)], both[len(wanted):],
                                      strict=True):
            obj = reply.objects[0] if reply.objects else None
            params = obj.htb_class() if obj is not None else None
            if obj is not None and params is not None:
                k.classes[minor] = params
                k.parents[minor] = _parent_minor(obj, major)
                if leaf.objects:
                    k.leaves[minor] = leaf.objects[0].leaf()
        # the classifier filter: any element at fw_prio tells its kind; fw: the marks'
        fgets = [tc.get_bpf_filter(up, major, fw_prio, "bpf filter")]
        if classifier == "fw":
            fgets += [tc.Request(tc.RTM_GETTFILTER, tc.NLM_F_ECHO, up, m, parent,
                                 tc.filter_info(fw_prio), tc.attr(tc.TCA_KIND, b"fw\0"),
                                 f"filter {m:#x}") for m in wanted if m >= MINOR_FIRST]
        for reply in nl.transact(fgets):
            for obj in reply.objects:
                _filter(k, obj, fw_prio)
    return k


def _filter(k: Kernel, obj: tc.TcObject, fw_prio: int) -> None:
    if obj.prio != fw_prio or not obj.handle:
        return
    fw = obj.fw()
    if fw is not None:
        k.filters[obj.handle] = fw
    elif obj.kind == "bpf" and obj.handle == tc.BPF_HANDLE and obj.bpf() is not None:
        k.bpf = obj.bpf()
    elif obj.kind:
        k.other_kind = obj.kind


def _parent_minor(obj: tc.TcObject, major: int) -> int:
    """The minor of a class's parent class; 0 when it hangs directly under the qdisc
    (the kernel reports TC_H_ROOT then) or under another qdisc's class."""
    if obj.parent == tc.TC_H_ROOT or obj.parent >> 16 != major:
        return 0
    return obj.parent & 0xFFFF


def _ifname(index: int) -> str:
    import socket

    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"

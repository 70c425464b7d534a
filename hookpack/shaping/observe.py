"""What the kernel has, limited to hookpack's own objects and to the reconcile's scope.

Instance scope (a hook): single gets for the instance's classes, filters and taps (and
the uplink's qdisc, default class and classifier filter), plus the chains and rules of
hookpack's nf_tables ``netdev`` table (two dumps: the mark rules are what link a tap to
its class). Node scope (``--all``): dumps of the uplink's classes and filters and of
every root qdisc, so leftovers of taps that vanished without a hook are found too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hookpack.shaping import nft, tc
from hookpack.shaping.model import MINOR_DEFAULT, TAP_MINOR

_GONE = tc.TcObject(0, 0, 0, 0, "<gone>")


@dataclass
class TapState:
    ifindex: int | None  # None: the device does not exist
    root: str = "none"  # "ours" | "default" | "foreign" | "none"
    root_kind: str = ""
    klass: tc.HtbParams | None = None


@dataclass
class Kernel:
    uplink_ifindex: int | None = None
    uplink_root: str = "none"  # "ours" | "default" | "foreign" | "none"
    uplink_kind: str = ""
    uplink_handle: int = 0
    classes: dict[int, tc.HtbParams] = field(default_factory=dict)  # minor -> params
    filters: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # mark -> cls
    bpf: bytes | None = None  # the cls_bpf mark -> class filter at fw_prio
    other_kind: str = ""  # a filter of another kind at fw_prio (the other classifier's)
    taps: dict[str, TapState] = field(default_factory=dict)
    stray_tap_qdiscs: dict[int, str] = field(default_factory=dict)  # ifindex -> name/"?"
    marks: Marks | None = None
    full: bool = False


@dataclass(frozen=True)
class TapMark:
    """One chain of hookpack's netdev table: the tap it marks, whose NIC, which mark."""

    tap: str
    instance: str  # "" when the rule's comment is not hookpack's
    nic: int
    value: int | None  # None: not exactly one hookpack mark rule
    mask: int | None
    hooked: bool  # on the tap's ingress, at hookpack's priority

    def sets(self, value: int, mask: int, instance: str, nic: int) -> bool:
        return (self.hooked and self.value == value and self.mask == mask
                and self.instance == instance and self.nic == nic)


@dataclass
class Marks:
    table: bool = False
    taps: dict[str, TapMark] = field(default_factory=dict)  # chain (= tap) -> mark


def observe_marks(n: nft.Nft) -> Marks:
    """hookpack's netdev table: one dump of chains, one of rules."""
    if not n.table_exists():
        return Marks()
    chains = n.chains()
    rules = n.marks()
    out = Marks(table=True)
    for name, chain in chains.items():
        found = rules.get(name, [])
        rule = found[0] if len(found) == 1 else None
        owner = nft.parse_comment(rule.comment) if rule else None
        instance, nic = owner if owner else ("", -1)
        out.taps[name] = TapMark(name, instance, nic, rule.value if rule else None,
                                 rule.mask if rule else None, chain.hooked_on(name))
    return out


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
    if full:
        # one dump of every root qdisc: the uplink's, the taps', and leftovers elsewhere
        for qd in nl.dump(tc.RTM_GETQDISC):
            if qd.parent == tc.TC_H_ROOT:
                roots[qd.ifindex] = qd
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
    gets = [tc.get_class(i, major, TAP_MINOR, f"class of {n}") for n, i in ours]
    for (name, _index), reply in zip(ours, nl.transact(gets), strict=True):
        if reply.objects:
            k.taps[name].klass = reply.objects[0].htb_class()
    if k.uplink_root != "ours" or k.uplink_ifindex is None:
        return k
    up = k.uplink_ifindex
    parent = tc.handle(major, 0)
    if minors is None:
        for obj in nl.dump(tc.RTM_GETTCLASS, up):
            params = obj.htb_class()
            if params is not None and obj.handle >> 16 == major:
                k.classes[obj.handle & 0xFFFF] = params
        for obj in nl.dump(tc.RTM_GETTFILTER, up, parent):
            _filter(k, obj, fw_prio)
    else:
        wanted = sorted({MINOR_DEFAULT, *minors})
        gets = [tc.get_class(up, major, m, f"class {major:x}:{m:x}") for m in wanted]
        for minor, reply in zip(wanted, nl.transact(gets), strict=True):
            params = reply.objects[0].htb_class() if reply.objects else None
            if params is not None:
                k.classes[minor] = params
        # the classifier filter: any element at fw_prio tells its kind; fw: the marks'
        fgets = [tc.get_bpf_filter(up, major, fw_prio, "bpf filter")]
        fgets += [tc.Request(tc.RTM_GETTFILTER, tc.NLM_F_ECHO, up, m, parent,
                             tc.filter_info(fw_prio), tc.attr(tc.TCA_KIND, b"fw\0"),
                             f"filter {m:#x}") for m in wanted if m != MINOR_DEFAULT]
        if classifier != "fw":
            fgets = fgets[:1]
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


def _ifname(index: int) -> str:
    import socket

    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"

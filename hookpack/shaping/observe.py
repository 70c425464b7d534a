"""What the kernel has, limited to hookpack's own objects and to the reconcile's scope.

Instance scope (a hook): single gets for the instance's classes, filters and taps (and
the uplink's qdisc and default class), plus the mangle table's rules (one save per
family: the rules are what link a tap to its class). Node scope (``--all``): dumps of
the uplink's classes and filters and of every root qdisc, so leftovers of taps that
vanished without a hook are found too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hookpack.shaping import tc
from hookpack.shaping.model import MINOR_DEFAULT, TAP_MINOR
from hookpack.shaping.netfilter import Netfilter, Observed, Scope

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
    taps: dict[str, TapState] = field(default_factory=dict)
    stray_tap_qdiscs: dict[int, str] = field(default_factory=dict)  # ifindex -> name/"?"
    nf: dict[int, Observed] = field(default_factory=dict)
    full: bool = False


def root_state(obj: tc.TcObject | None, major: int) -> str:
    if obj is None:
        return "default"  # builtin (noqueue) root: the kernel reports nothing
    if obj.kind == "htb" and obj.handle == tc.handle(major, 0):
        return "ours"
    if obj.handle >> 16 == 0:
        return "default"  # kernel-made root qdiscs have handle 0: (pfifo_fast, mq, noqueue)
    return "foreign"


def observe_rules(nf: Netfilter, scope: Scope | None = None) -> dict[int, Observed]:
    return nf.observe_all(scope=scope)


def observe(nl: tc.Netlink, nf_seen: dict[int, Observed], *, uplink: str, major: int,
            fw_prio: int, taps: Mapping[str, int | None], minors: Iterable[int] | None,
            full: bool) -> Kernel:
    """``taps``: the taps in scope and their ifindex (None: gone); ``minors``: class
    minors in scope (None: all, node scope)."""
    k = Kernel(full=full, nf=nf_seen)
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
            fw = obj.fw()
            if fw is not None and obj.prio == fw_prio and obj.handle:
                k.filters[obj.handle] = fw
    else:
        wanted = sorted({MINOR_DEFAULT, *minors})
        gets = [tc.get_class(up, major, m, f"class {major:x}:{m:x}") for m in wanted]
        for minor, reply in zip(wanted, nl.transact(gets), strict=True):
            params = reply.objects[0].htb_class() if reply.objects else None
            if params is not None:
                k.classes[minor] = params
        marks = [m for m in wanted if m != MINOR_DEFAULT]
        fgets = [tc.Request(tc.RTM_GETTFILTER, tc.NLM_F_ECHO, up, m, parent,
                            tc.filter_info(fw_prio), tc.attr(tc.TCA_KIND, b"fw\0"),
                            f"filter {m:#x}") for m in marks]
        for mark, reply in zip(marks, nl.transact(fgets), strict=True):
            fw = reply.objects[0].fw() if reply.objects else None
            if fw is not None:
                k.filters[mark] = fw
    return k


def _ifname(index: int) -> str:
    import socket

    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"

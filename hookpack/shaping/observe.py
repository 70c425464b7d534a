"""What the kernel has, limited to hookpack's own objects and to the reconcile's scope.

Instance scope (a hook): single gets for the instance's classes, filters and taps (and
the uplink's qdisc and default class), plus the mangle table's rules (one save per
family: the rules are what link a tap to its class). Node scope (``--all``): dumps of
the uplink's classes and filters and of every root qdisc, so leftovers of taps that
vanished without a hook are found too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hookpack.shaping import tc
from hookpack.shaping.model import MINOR_DEFAULT, TAP_MINOR
from hookpack.shaping.netfilter import Netfilter, Observed


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


def observe_rules(nf: Netfilter) -> dict[int, Observed]:
    return {family: nf.observe(family) for family in nf.families}


def observe(nl: tc.Netlink, nf_seen: dict[int, Observed], *, uplink: str, major: int,
            fw_prio: int, taps: Iterable[str], minors: Iterable[int] | None,
            full: bool) -> Kernel:
    """``taps``: the taps in scope; ``minors``: class minors in scope (None: all)."""
    k = Kernel(full=full, nf=nf_seen)
    k.uplink_ifindex = tc.ifindex(uplink)
    tap_names = sorted(set(taps))
    requests: list[tc.Request] = []
    if k.uplink_ifindex is not None:
        requests.append(tc.get_root_qdisc(k.uplink_ifindex, f"root qdisc of {uplink}"))
    tap_index = {name: tc.ifindex(name) for name in tap_names}
    for name in tap_names:
        index = tap_index[name]
        if index is not None:
            requests.append(tc.get_root_qdisc(index, f"root qdisc of {name}"))
            requests.append(tc.get_class(index, major, TAP_MINOR, f"class of {name}"))
    replies = iter(nl.transact(requests))
    if k.uplink_ifindex is not None:
        reply = next(replies)
        obj = reply.objects[0] if reply.objects else None
        k.uplink_root = root_state(obj, major)
        k.uplink_kind = obj.kind if obj else "noqueue"
        k.uplink_handle = obj.handle if obj else 0
    for name in tap_names:
        index = tap_index[name]
        if index is None:
            k.taps[name] = TapState(None)
            continue
        q_reply, c_reply = next(replies), next(replies)
        if q_reply.error in tc.GONE:
            k.taps[name] = TapState(None)
            continue
        obj = q_reply.objects[0] if q_reply.objects else None
        state = TapState(index, root_state(obj, major), obj.kind if obj else "noqueue")
        if state.root == "ours" and c_reply.objects:
            state.klass = c_reply.objects[0].htb_class()
        k.taps[name] = state
    if k.uplink_root != "ours" or k.uplink_ifindex is None:
        if full:
            _stray_tap_qdiscs(nl, k, major, tap_index)
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
    if full:
        _stray_tap_qdiscs(nl, k, major, tap_index)
    return k


def _stray_tap_qdiscs(nl: tc.Netlink, k: Kernel, major: int,
                      tap_index: dict[str, int | None]) -> None:
    """Root HTB qdiscs with hookpack's handle on devices that are not in scope."""
    known = {i for i in tap_index.values() if i is not None}
    if k.uplink_ifindex is not None:
        known.add(k.uplink_ifindex)
    for obj in nl.dump(tc.RTM_GETQDISC):
        if (obj.parent == tc.TC_H_ROOT and obj.kind == "htb"
                and obj.handle == tc.handle(major, 0) and obj.ifindex not in known):
            k.stray_tap_qdiscs[obj.ifindex] = _ifname(obj.ifindex)


def _ifname(index: int) -> str:
    import socket

    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"

"""rtnetlink for the few traffic-control messages shaping needs: pipelined, read back.

Why not pyroute2 here: importing it costs ~200 ms, two thirds of the hook's whole
300 ms budget, and its synchronous ``IPRoute.tc()`` waits for each answer (~1 ms per
request). Shaping needs five message types (qdisc, class, filter: new/del/get), so
this module encodes them with ``struct`` (the layouts of linux/pkt_sched.h and
linux/rtnetlink.h), sends many requests per ``sendmsg`` and matches the kernel's
acknowledgements by sequence number. Every object written is read back (dumps are
parsed here too); the tests cross-check the result with ``tc -j`` and pyroute2.
"""

from __future__ import annotations

import _socket  # not socket.py: its enums cost a millisecond of every run's start
import contextlib
import errno
import functools
import os
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from hookpack.record import field, record

# linux/rtnetlink.h
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTCLASS, RTM_DELTCLASS, RTM_GETTCLASS = 40, 41, 42
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
WRITES = frozenset({RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTCLASS, RTM_DELTCLASS,
                    RTM_NEWTFILTER, RTM_DELTFILTER})
# linux/netlink.h
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x2, 0x4, 0x8
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
# linux/pkt_sched.h, linux/rtnetlink.h
TCA_KIND, TCA_OPTIONS, TCA_STATS2 = 1, 2, 7
TCA_STATS_BASIC = 1
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_DIRECT_QLEN, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 5, 6, 7
TCA_FW_CLASSID, TCA_FW_MASK = 1, 5
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_MARK = 1, 5, 10
TCA_BPF_OPS_LEN, TCA_BPF_OPS = 4, 5
TC_H_ROOT = 0xFFFFFFFF
TC_LINKLAYER_ETHERNET = 1
ETH_P_ALL = 0x0003
TIME_UNITS_PER_SEC = 1_000_000_000  # kernel ns; HTB's buffer is in psched ticks (ns >> 6)
PSCHED_SHIFT = 6

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_NLA = struct.Struct("=HH")
_RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate
_HTB_OPT = struct.Struct("=12s12sIIIII")  # rate, ceil, buffer, cbuffer, quantum, level, prio
_HTB_GLOB = struct.Struct("=IIIII")  # version, rate2quantum, defcls, debug, direct_pkts
_TBF_QOPT = struct.Struct("=12s12sIII")  # rate, peakrate, limit, buffer, mtu
_U32 = 0xFFFFFFFF
# a replace's echo also reports the object it replaced (RTM_DEL*): not the answer
_NOT_OBJECTS = frozenset({NLMSG_DONE, RTM_DELQDISC, RTM_DELTCLASS, RTM_DELTFILTER})


class NetlinkError(OSError):
    """The kernel refused a request; ``errno`` and the kernel's extended-ack text."""

    def __init__(self, code: int, text: str, what: str) -> None:
        self.extack = text
        detail = f": {text}" if text else ""
        super().__init__(code, f"{what}: {os.strerror(code)}{detail}")


class NetlinkLost(OSError):
    """Replies were lost (ENOBUFS: the receive buffer overflowed) or did not come in
    time: which requests the kernel carried out is unknown. The caller re-observes."""


def _rcvbuf() -> int:
    """The receive buffer asked for: 8 MiB, or ``HOOKPACK_NETLINK_RCVBUF`` bytes (the
    tests set a tiny one to make the kernel drop replies with ENOBUFS for real)."""
    try:
        return max(256, int(os.environ.get("HOOKPACK_NETLINK_RCVBUF", "")))
    except ValueError:
        return 8 << 20


def handle(major: int, minor: int) -> int:
    return ((major & 0xFFFF) << 16) | (minor & 0xFFFF)


def fmt_handle(value: int) -> str:
    return f"{value >> 16:x}:{value & 0xFFFF:x}"


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def attr_spans(buf: bytes | memoryview, start: int = 0, end: int | None = None
               ) -> list[tuple[int, int, int]]:
    """(kind, payload start, payload end) of each attribute in ``buf[start:end]``: the
    one walk over netlink attributes (rtnetlink here, nf_tables in nft.py)."""
    out = []
    end = len(buf) if end is None else end
    pos = start
    while pos + _NLA.size <= end:
        length, kind = _NLA.unpack_from(buf, pos)
        if length < _NLA.size:
            break
        out.append((kind & NLA_TYPE_MASK, pos + _NLA.size, pos + length))
        pos += _align(length)
    return out


def parse_attrs(buf: bytes | memoryview, start: int = 0, end: int | None = None
                ) -> dict[int, bytes]:
    return {kind: bytes(buf[s:e]) for kind, s, e in attr_spans(buf, start, end)}


# ---- objects as the kernel reports them -------------------------------------------------


@record(frozen=True)
class TcObject:
    """One qdisc, class or filter from a reply: header fields and the parts shaping reads."""

    ifindex: int
    handle: int
    parent: int
    info: int
    kind: str
    raw_options: bytes = field(default=b"", compare=False, repr=False)
    raw_stats: bytes = field(default=b"", compare=False, repr=False)

    # parsed on first use: a dump of 1000 qdiscs needs only their handles
    @functools.cached_property
    def options(self) -> dict[int, bytes]:
        return parse_attrs(self.raw_options) if self.raw_options else {}

    @functools.cached_property
    def _basic(self) -> tuple[int, int]:
        basic = parse_attrs(self.raw_stats).get(TCA_STATS_BASIC) if self.raw_stats else None
        if basic and len(basic) >= 12:
            sent, packets = struct.unpack_from("=QI", basic)
            return int(sent), int(packets)
        return 0, 0

    @property
    def bytes_sent(self) -> int:
        return self._basic[0]

    @property
    def packets_sent(self) -> int:
        return self._basic[1]

    @property
    def prio(self) -> int:
        return self.info >> 16

    def htb_class(self) -> HtbParams | None:
        raw = self.options.get(TCA_HTB_PARMS)
        if self.kind != "htb" or raw is None or len(raw) < _HTB_OPT.size:
            return None
        rate_b, ceil_b, buffer, cbuffer, quantum, level, prio = _HTB_OPT.unpack_from(raw)
        rate = _RATESPEC.unpack(rate_b)[5]
        ceil = _RATESPEC.unpack(ceil_b)[5]
        if TCA_HTB_RATE64 in self.options:
            rate = struct.unpack("=Q", self.options[TCA_HTB_RATE64][:8])[0]
        if TCA_HTB_CEIL64 in self.options:
            ceil = struct.unpack("=Q", self.options[TCA_HTB_CEIL64][:8])[0]
        return HtbParams(rate, ceil, ticks_to_bytes(buffer, rate), ticks_to_bytes(cbuffer, ceil),
                         quantum, prio, level)

    def htb_qdisc(self) -> tuple[int, int] | None:
        """(r2q, default minor) of an HTB qdisc."""
        raw = self.options.get(TCA_HTB_INIT)
        if self.kind != "htb" or raw is None or len(raw) < _HTB_GLOB.size:
            return None
        _version, r2q, defcls, _debug, _direct = _HTB_GLOB.unpack_from(raw)
        return r2q, defcls

    def leaf(self) -> Leaf:
        """This qdisc as a class's leaf: kind and, for a fifo, its limit. Handle 0 is the
        class's built-in default (pfifo of the device's txqueuelen)."""
        if self.handle == 0:
            return Leaf("default")
        if self.kind in ("bfifo", "pfifo") and len(self.raw_options) >= 4:
            return Leaf(self.kind, struct.unpack_from("=I", self.raw_options)[0])
        raw = self.options.get(TCA_TBF_PARMS) if self.kind == "tbf" else None
        if raw is not None and len(raw) >= _TBF_QOPT.size:
            rate_b, _peak, limit, buffer, _mtu = _TBF_QOPT.unpack_from(raw)
            rate = _RATESPEC.unpack(rate_b)[5]
            if TCA_TBF_RATE64 in self.options:
                rate = struct.unpack("=Q", self.options[TCA_TBF_RATE64][:8])[0]
            return Leaf("tbf", limit, rate, ticks_to_bytes(buffer, rate))
        return Leaf(self.kind)

    def fw(self) -> tuple[int, int | None] | None:
        """(classid, mask) of an fw filter element."""
        if self.kind != "fw" or TCA_FW_CLASSID not in self.options:
            return None
        mask = self.options.get(TCA_FW_MASK)
        return (struct.unpack("=I", self.options[TCA_FW_CLASSID][:4])[0],
                struct.unpack("=I", mask[:4])[0] if mask else None)


    def bpf(self) -> bytes | None:
        """The classic BPF instructions of a cls_bpf filter element (the kernel dumps no
        name for a classic program)."""
        if self.kind != "bpf" or TCA_BPF_OPS not in self.options:
            return None
        return self.options[TCA_BPF_OPS]


@record(frozen=True)
class Leaf:
    """The qdisc under a class: ``kind`` ("fq_codel", "bfifo", "default": HTB's own
    pfifo) and, for a fifo, its limit (bytes for bfifo, packets for pfifo)."""

    kind: str
    limit: int | None = None
    rate: int | None = None  # tbf: bytes/s
    burst: int | None = None  # tbf: bytes (GSO packets above it are segmented)

    def __str__(self) -> str:
        if self.limit is None:
            return self.kind
        if self.kind == "tbf":
            return f"tbf limit {self.limit}b burst {self.burst}b"
        return f"{self.kind} limit {self.limit}{'b' if self.kind == 'bfifo' else 'p'}"

    def same(self, seen: Leaf | None) -> bool:
        """``seen`` (read back) is this leaf; a tbf's burst travels as 64 ns ticks."""
        if seen is None or self.kind != "tbf":
            return seen == self
        slack = (self.rate or 0) * 64 // 10**9 + 2
        return (seen.kind, seen.limit, seen.rate) == (self.kind, self.limit, self.rate) \
            and abs((seen.burst or 0) - (self.burst or 0)) <= slack


@record(frozen=True)
class HtbParams:
    """An HTB class's parameters in bytes and bytes/s (buffers converted from ticks)."""

    rate: int
    ceil: int
    burst: int
    cburst: int
    quantum: int
    prio: int = 0
    level: int = field(default=0, compare=False)  # as read back: 0 for a leaf class


def bytes_to_ticks(size: int, rate: int) -> int:
    """HTB's buffer field: the time to send ``size`` bytes at ``rate``, in psched ticks."""
    return min(_U32, (size * TIME_UNITS_PER_SEC // max(rate, 1)) >> PSCHED_SHIFT)


def ticks_to_bytes(ticks: int, rate: int) -> int:
    return round((ticks << PSCHED_SHIFT) * rate / TIME_UNITS_PER_SEC)


def _ratespec(rate: int) -> bytes:
    return _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate, _U32))


@functools.lru_cache(maxsize=256)
def htb_class_options(p: HtbParams) -> bytes:
    opt = _HTB_OPT.pack(_ratespec(p.rate), _ratespec(p.ceil), bytes_to_ticks(p.burst, p.rate),
                        bytes_to_ticks(p.cburst, p.ceil), p.quantum, 0, p.prio)
    body = attr(TCA_HTB_PARMS, opt)
    if p.rate > _U32:
        body += attr(TCA_HTB_RATE64, struct.pack("=Q", p.rate))
    if p.ceil > _U32:
        body += attr(TCA_HTB_CEIL64, struct.pack("=Q", p.ceil))
    return attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, body)


@functools.lru_cache(maxsize=256)
def htb_qdisc_options(r2q: int, default_minor: int) -> bytes:
    glob = _HTB_GLOB.pack(3, r2q, default_minor, 0, 0)
    return attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, attr(TCA_HTB_INIT, glob))


@functools.lru_cache(maxsize=256)
def leaf_options(leaf: Leaf) -> bytes:
    """fq_codel with the kernel's defaults (target 5 ms, interval 100 ms: no attribute
    sent, so nothing to drift); a fifo with its limit (struct tc_fifo_qopt)."""
    if leaf.kind == "tbf":
        rate, burst = leaf.rate or 0, leaf.burst or 0
        qopt = _TBF_QOPT.pack(_ratespec(rate), bytes(12), leaf.limit or 0,
                              bytes_to_ticks(burst, rate), 0)
        body = attr(TCA_TBF_PARMS, qopt) + u32(TCA_TBF_BURST, burst)
        if rate > _U32:
            body += attr(TCA_TBF_RATE64, struct.pack("=Q", rate))
    else:
        body = b"" if leaf.limit is None else struct.pack("=I", leaf.limit)
    return attr(TCA_KIND, leaf.kind.encode() + b"\0") + attr(TCA_OPTIONS, body)


def fw_options(classid: int, mask: int | None) -> bytes:
    body = u32(TCA_FW_CLASSID, classid)
    if mask is not None and mask != _U32:
        body += u32(TCA_FW_MASK, mask)
    return attr(TCA_KIND, b"fw\0") + attr(TCA_OPTIONS, body)


def u32_mark_options(classid: int, mark: int, mask: int) -> bytes:
    """A u32 filter matching only ``mark`` (the trap: some kernels drop the mark match)."""
    sel = struct.pack("=BBBxHHhhI", 1, 0, 0, 0, 0, 0, 0, 0)  # TC_U32_TERMINAL, no keys
    body = (u32(TCA_U32_CLASSID, classid) + attr(TCA_U32_SEL, sel)
            + attr(TCA_U32_MARK, struct.pack("=III", mark, mask, 0)))
    return attr(TCA_KIND, b"u32\0") + attr(TCA_OPTIONS, body)


# classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_SOCK_FILTER = struct.Struct("=HBBI")
SKF_AD_MARK = 0xFFFFF000 + 20  # SKF_AD_OFF + SKF_AD_MARK: the ancillary load of skb->mark


def mark_program(major: int, mask: int) -> bytes:
    """A classic BPF classifier: classid = major:(mark & mask); no match (0) when the
    masked mark is 0 or does not fit a minor. One program for every tap: O(1) per packet.
    cls_bpf takes it over rtnetlink (TCA_BPF_OPS): no bpf() syscall, no eBPF verifier."""
    ops = [
        (0x20, 0, 0, SKF_AD_MARK),  # ld  mark
        (0x54, 0, 0, mask),  # and #mask
        (0x15, 3, 0, 0),  # jeq #0 -> ret #0
        (0x25, 2, 0, 0xFFFF),  # jgt #0xffff -> ret #0
        (0x44, 0, 0, (major & 0xFFFF) << 16),  # or  #major:0
        (0x16, 0, 0, 0),  # ret a
        (0x06, 0, 0, 0),  # ret #0 (no match: the qdisc's default class)
    ]
    return b"".join(_SOCK_FILTER.pack(*op) for op in ops)


BPF_HANDLE = 1


def bpf_options(ops: bytes) -> bytes:
    body = (attr(TCA_BPF_OPS_LEN, struct.pack("=H", len(ops) // _SOCK_FILTER.size))
            + attr(TCA_BPF_OPS, ops))
    return attr(TCA_KIND, b"bpf\0") + attr(TCA_OPTIONS, body)


def set_bpf_filter(ifindex: int, major: int, prio: int, ops: bytes, replace: bool,
                   what: str) -> Request:
    flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    return Request(RTM_NEWTFILTER, flags, ifindex, BPF_HANDLE, handle(major, 0),
                   filter_info(prio), bpf_options(ops), what)


def get_bpf_filter(ifindex: int, major: int, prio: int, what: str) -> Request:
    return Request(RTM_GETTFILTER, NLM_F_ECHO, ifindex, BPF_HANDLE, handle(major, 0),
                   filter_info(prio), attr(TCA_KIND, b"bpf\0"), what)


def del_filter(ifindex: int, major: int, prio: int, kind: str, what: str) -> Request:
    """Delete the whole filter of ``kind`` at ``prio`` (every element)."""
    return Request(RTM_DELTFILTER, 0, ifindex, 0, handle(major, 0), filter_info(prio),
                   attr(TCA_KIND, kind.encode() + b"\0"), what)


# ---- requests ---------------------------------------------------------------------------


class Request(NamedTuple):  # a NamedTuple: a full apply makes 5000, a dataclass is slower
    type: int
    flags: int
    ifindex: int
    handle: int = 0
    parent: int = 0
    info: int = 0
    body: bytes = b""
    what: str = ""  # for error messages: "class 4850:10 on up0"

    def echoed(self) -> Request:
        """The same write with NLM_F_ECHO: the kernel sends the object as it stored it
        back to us (its change notification, unicast, same sequence number): a read-back
        in the same round trip."""
        return self._replace(flags=self.flags | NLM_F_ECHO)

    def encode(self, seq: int) -> bytes:
        tcm = _TCMSG.pack(_socket.AF_UNSPEC, self.ifindex, self.handle, self.parent, self.info)
        payload = tcm + self.body
        return _NLMSG.pack(_NLMSG.size + len(payload), self.type,
                           NLM_F_REQUEST | self.flags, seq, 0) + payload


class Reply:
    """What the kernel answered to one request: an error, or objects (a get's answer, a
    write's echo); nothing at all means success. A plain class: one per request."""

    __slots__ = ("error", "extack", "objects")

    def __init__(self, error: int = 0, extack: str = "",
                 objects: list[TcObject] | None = None) -> None:
        self.error = error
        self.extack = extack
        self.objects: list[TcObject] = [] if objects is None else objects

    def __repr__(self) -> str:
        return f"Reply(error={self.error}, extack={self.extack!r}, objects={self.objects})"


def new_qdisc(ifindex: int, major: int, r2q: int, default_minor: int, what: str) -> Request:
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, ifindex, handle(major, 0),
                   TC_H_ROOT, 0, htb_qdisc_options(r2q, default_minor), what)


def del_root_qdisc(ifindex: int, major: int, what: str) -> Request:
    return Request(RTM_DELQDISC, 0, ifindex, handle(major, 0), TC_H_ROOT, 0, b"", what)


def get_root_qdisc(ifindex: int, what: str) -> Request:
    return Request(RTM_GETQDISC, NLM_F_ECHO, ifindex, 0, TC_H_ROOT, 0, b"", what)


def set_class(ifindex: int, major: int, minor: int, p: HtbParams, what: str,
              parent: int = 0) -> Request:
    """Create or change (no NLM_F_EXCL: the kernel changes an existing class in place).
    ``parent``: the parent class's minor (0: the qdisc itself; HTB cannot move a class
    to another parent, a change of parent is a delete and a create)."""
    return Request(RTM_NEWTCLASS, NLM_F_CREATE, ifindex, handle(major, minor),
                   handle(major, parent), 0, htb_class_options(p), what)


def set_leaf(ifindex: int, classid: int, leaf: Leaf, what: str) -> Request:
    """The qdisc under class ``classid``: handle 0 with CREATE|REPLACE is tc's
    ``qdisc replace parent X``: the kernel changes a leaf of the same kind in place,
    grafts a new one (handle picked by the kernel) in place of a different kind or of
    the class's default pfifo."""
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, ifindex, 0, classid, 0,
                   leaf_options(leaf), what)


def del_leaf(ifindex: int, classid: int, what: str) -> Request:
    """Remove the qdisc under class ``classid``: HTB grafts its own pfifo back."""
    return Request(RTM_DELQDISC, 0, ifindex, 0, classid, 0, b"", what)


def get_leaf(ifindex: int, classid: int, what: str) -> Request:
    return Request(RTM_GETQDISC, NLM_F_ECHO, ifindex, 0, classid, 0, b"", what)


def del_class(ifindex: int, major: int, minor: int, what: str) -> Request:
    return Request(RTM_DELTCLASS, 0, ifindex, handle(major, minor), handle(major, 0), 0, b"",
                   what)


def get_class(ifindex: int, major: int, minor: int, what: str) -> Request:
    return Request(RTM_GETTCLASS, NLM_F_ECHO, ifindex, handle(major, minor), handle(major, 0),
                   0, b"", what)


def filter_info(prio: int) -> int:
    return (prio << 16) | _socket.htons(ETH_P_ALL)


def set_fw_filter(ifindex: int, major: int, prio: int, mark: int, classid: int,
                  mask: int | None, replace: bool, what: str) -> Request:
    flags = NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    return Request(RTM_NEWTFILTER, flags, ifindex, mark, handle(major, 0), filter_info(prio),
                   fw_options(classid, mask), what)


def del_fw_filter(ifindex: int, major: int, prio: int, mark: int, what: str) -> Request:
    return Request(RTM_DELTFILTER, 0, ifindex, mark, handle(major, 0), filter_info(prio),
                   attr(TCA_KIND, b"fw\0"), what)


# ---- the socket -------------------------------------------------------------------------


class Netlink:
    """One NETLINK_ROUTE socket; ``transact`` pipelines, ``dump`` lists. Counts writes."""

    CHUNK = 200  # requests per sendmsg: their acks must fit the receive buffer

    def __init__(self, timeout: float = 10.0) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                  _socket.NETLINK_ROUTE)
        self.sock.settimeout(timeout)  # the kernel always answers; never wait unbounded
        # SO_RCVBUFFORCE (33) / SO_SNDBUFFORCE (32) as root, else the capped plain ones
        for force, plain, size in ((33, _socket.SO_RCVBUF, _rcvbuf()),
                                   (32, _socket.SO_SNDBUF, 4 << 20)):
            try:
                self.sock.setsockopt(_socket.SOL_SOCKET, force, size)
            except OSError:
                self.sock.setsockopt(_socket.SOL_SOCKET, plain, size)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.chunk = self.CHUNK
        self.writes = 0  # kernel writes requested (new/del)
        self.reads = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transact(self, requests: Sequence[Request]) -> list[Reply]:
        """Send every request, pipelined; one Reply per request, in order.

        Requests go without NLM_F_ACK: the kernel answers only errors (and the replies
        of gets), and a NOOP with NLM_F_ACK closes each chunk. The kernel handles the
        messages of one sendmsg in order, so once the NOOP's ack is in, every request
        before it is done: no message for it means success (or, for a get, no object).
        That halves the messages read back (one ``recv`` each).
        """
        replies: list[Reply] = []
        for start in range(0, len(requests), self.chunk):
            chunk = requests[start:start + self.chunk]
            first = self.seq + 1
            data = bytearray()
            for req in chunk:
                self.seq += 1
                data += req.encode(self.seq)
                if req.type in WRITES:
                    self.writes += 1
                else:
                    self.reads += 1
            self.seq += 1
            barrier = self.seq
            data += _NLMSG.pack(_NLMSG.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, barrier, 0)
            out: dict[int, Reply] = {}  # only requests the kernel answered
            self.sock.send(bytes(data))
            done = False
            while not done:
                for seq, mtype, msg in self._receive():
                    if seq == barrier:
                        done = mtype == NLMSG_ERROR
                        continue
                    if not first <= seq < barrier:
                        continue
                    reply = out.setdefault(seq, Reply())
                    if mtype == NLMSG_ERROR:
                        reply.error, reply.extack = _parse_error(msg)
                    elif mtype not in _NOT_OBJECTS:  # a get's answer, a write's echo
                        reply.objects.append(_parse_tc(msg))
            replies.extend(out.get(first + i) or Reply() for i in range(len(chunk)))
        return replies

    def dump(self, mtype: int, ifindex: int = 0, parent: int = 0) -> list[TcObject]:
        self.seq += 1
        self.reads += 1
        seq = self.seq
        tcm = _TCMSG.pack(_socket.AF_UNSPEC, ifindex, 0, parent, 0)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(tcm), mtype, NLM_F_REQUEST | NLM_F_DUMP,
                                   seq, 0) + tcm)
        objects: list[TcObject] = []
        while True:
            for rseq, rtype, msg in self._receive():
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return objects
                if rtype == NLMSG_ERROR:
                    code, text = _parse_error(msg)
                    if code:
                        raise NetlinkError(code, text, "dump")
                    return objects
                objects.append(_parse_tc(msg))

    def _receive(self) -> Iterable[tuple[int, int, memoryview]]:
        try:
            data = memoryview(self.sock.recv(1 << 20))
        except TimeoutError:
            raise NetlinkLost(errno.ETIMEDOUT, "netlink: no answer from the kernel in "
                              f"{self.sock.gettimeout()} s") from None
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            raise NetlinkLost(errno.ENOBUFS, "netlink: replies lost (ENOBUFS: receive "
                              "buffer overflowed)") from None
        pos = 0
        while pos + _NLMSG.size <= len(data):
            length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, pos)
            if length < _NLMSG.size:
                break
            yield seq, mtype, data[pos + _NLMSG.size: pos + length]
            pos += _align(length)


def _parse_error(msg: memoryview) -> tuple[int, str]:
    code = -struct.unpack_from("=i", msg, 0)[0]
    text = ""
    # nlmsgerr: error (4) + the request's header (16; its payload dropped: NETLINK_CAP_ACK)
    tlv_start = 4 + _NLMSG.size
    if len(msg) > tlv_start:
        attrs = parse_attrs(msg, tlv_start)
        if NLMSGERR_ATTR_MSG in attrs:
            text = attrs[NLMSGERR_ATTR_MSG].rstrip(b"\0").decode(errors="replace")
    return code, text


def _parse_tc(msg: memoryview) -> TcObject:
    _family, ifindex, hdl, parent, info = _TCMSG.unpack_from(msg, 0)
    attrs = parse_attrs(msg, _TCMSG.size)
    kind = attrs.get(TCA_KIND, b"").rstrip(b"\0").decode(errors="replace")
    return TcObject(ifindex, hdl, parent, info, kind, attrs.get(TCA_OPTIONS, b""),
                    attrs.get(TCA_STATS2, b""))


def ifindex(name: str) -> int | None:
    """The interface's index in this network namespace, None when it does not exist."""
    return ifindexes([name])[name]


SIOCGIFINDEX = 0x8933
_IFREQ_INDEX = struct.Struct("=16si")  # struct ifreq's name and ifr_ifindex


def ifindexes(names: Iterable[str]) -> dict[str, int | None]:
    """Interface indexes (None: no such interface here) over one socket: SIOCGIFINDEX,
    what ``if_nametoindex`` does with a socket of its own per name."""
    import fcntl

    out: dict[str, int | None] = {}
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        for name in names:
            raw = name.encode()
            if not raw or len(raw) > 15 or b"\0" in raw:  # IFNAMSIZ: the kernel's limit
                out[name] = None
                continue
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, _IFREQ_INDEX.pack(raw, 0))
            except OSError:
                out[name] = None
                continue
            out[name] = _IFREQ_INDEX.unpack(answer)[1]
    finally:
        sock.close()
    return out


def raise_for(reply: Reply, what: str, ok: Iterable[int] = ()) -> None:
    if reply.error and reply.error not in ok:
        raise NetlinkError(reply.error, reply.extack, what)


GONE = frozenset({errno.ENODEV, errno.ENXIO})  # the device vanished

"""nf_tables over netlink for the one thing shaping needs: a mark on every frame a tap
receives, set in a ``netdev`` ingress base chain per tap.

Why netdev ingress: the hook belongs to one device (a chain per tap costs a packet of
another tap nothing: O(1) in the number of taps), it sees every frame the VM puts on
its tap (IPv4, IPv6, ARP, any ethertype, 802.1Q/802.1ad tagged) before the bridge,
Open vSwitch or the routing code take it, and the mark it sets travels with the frame
to the uplink's qdisc (IPv4 forwarding rewrites ``skb->priority``, never the mark).

Layout, in table ``netdev hookpack``, two chains per tap::

    chain tap3 { type filter hook ingress device "tap3" priority -150; policy accept;
                 jump mark/tap3 }
    chain mark/tap3 { meta mark set meta mark & 0xffff0000 | 0x00000010
                      comment "hookpack:web1:0" }

Why two: the base chain belongs to its device, and Linux before 6.16 (Debian 12's
6.1) deletes a single-device netdev base chain, rules and all, when the device goes.
The regular chain ``mark/<tap>`` survives the tap: it is the record of which instance's
NIC had which mark (so which class), read by the stop or migrate hook that must remove
that class after Ganeti has destroyed the tap. ``/`` cannot be in an interface name,
so a record's name never clashes with a tap's chain.

Why not the ``nft`` tool: hookpack writes rtnetlink by hand already (hookpack.actions.shaping.tc);
the same here is one netlink transaction per run instead of a process, and needs no
package. ``nft list table netdev hookpack`` shows the result.

Messages (linux/netfilter/nf_tables.h, nfnetlink.h): a write is one batch
(BATCH_BEGIN .. BATCH_END) applied atomically by the kernel; errors are matched to
messages by sequence number (a NOOP with an ack after the batch closes it).
"""

from __future__ import annotations

import _socket  # as in tc.py
import contextlib
import functools
import os
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from hookpack.actions.shaping.tc import attr, attr_spans, parse_attrs
from hookpack.record import field, record

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFPROTO_NETDEV = 5
NF_NETDEV_INGRESS = 0
NF_ACCEPT = 1
NFT_JUMP = -3
# nf_tables messages
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
GETGEN = 16
# attributes
TABLE_NAME = 1
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_HOOKNUM, HOOK_PRIORITY, HOOK_DEV = 1, 2, 3
RULE_TABLE, RULE_CHAIN, RULE_HANDLE, RULE_EXPRESSIONS, RULE_USERDATA = 1, 2, 3, 4, 7
LIST_ELEM = 1
EXPR_NAME, EXPR_DATA = 1, 2
META_DREG, META_KEY, META_SREG = 1, 2, 3
META_MARK = 3
BITWISE_SREG, BITWISE_DREG, BITWISE_LEN, BITWISE_MASK, BITWISE_XOR = 1, 2, 3, 4, 5
DATA_VALUE, DATA_VERDICT = 1, 2
VERDICT_CODE, VERDICT_CHAIN = 1, 2
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
REG_VERDICT = 0
REG_1 = 1
UDATA_COMMENT = 0  # libnftnl's NFTNL_UDATA_RULE_COMMENT: `nft list` prints it
NLA_F_NESTED = 0x8000
# netlink
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11

TABLE = "hookpack"
RECORD = "mark/"  # the prefix of a tap's record chain
PRIORITY = -150  # the "mangle" slot: before filter chains that may match on the mark
COMMENT_MAX = 254  # a udata TLV holds 255 bytes, the trailing NUL included

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big endian)
_U32 = struct.Struct("=I")  # a mark value as the kernel keeps it (host order)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def _str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">i" if value < 0 else ">I", value))


def _span_at(buf: bytes, start: int, end: int, *path: int) -> tuple[int, int] | None:
    """The payload span of the attribute at ``path`` (kinds, outermost first)."""
    span: tuple[int, int] | None = (start, end)
    for kind in path:
        if span is None:
            return None
        span = next(((s, e) for k, s, e in attr_spans(buf, *span) if k == kind), None)
    return span


def _text(raw: bytes | None) -> str:
    return raw.rstrip(b"\0").decode(errors="replace") if raw else ""


# ---- what the kernel has ---------------------------------------------------------------


@record(frozen=True)
class Chain:
    name: str
    device: str  # the hook's device ("" for a chain without a device hook)
    hooknum: int | None
    priority: int | None

    def hooked_on(self, tap: str) -> bool:
        return (self.device == tap and self.hooknum == NF_NETDEV_INGRESS
                and self.priority == PRIORITY)


@record(frozen=True)
class Mark:
    """The mark rule of one tap's chain, as read back: ``mark = mark & ~mask | value``."""

    chain: str
    comment: str
    value: int | None  # None: the rule is not hookpack's mark rule
    mask: int | None
    handle: int = 0
    jump: str = ""  # the chain a jump rule goes to


@record(frozen=True)
class TapChains:
    """What exists of one tap's two chains (what a write must create, flush or delete)."""

    record: bool = False
    base: bool = False
    base_on_tap: bool = False  # the base chain is on the tap's ingress, at PRIORITY


def record_name(tap: str) -> str:
    return RECORD + tap


def record_tap(chain: str) -> str | None:
    """The tap a record chain is about, None for another chain."""
    return chain[len(RECORD):] if chain.startswith(RECORD) and len(chain) > len(RECORD) \
        else None


def comment(instance: str, nic: int) -> str:
    return f"hookpack:{instance}:{nic}"


def parse_comment(text: str) -> tuple[str, int] | None:
    head, _, rest = text.partition(":")
    instance, _, nic = rest.rpartition(":")
    if head != "hookpack" or not instance or not nic.isdigit():
        return None
    return instance, int(nic)


def _chain(msg: bytes) -> Chain:
    return _chain_of(parse_attrs(msg, _NFGEN.size))


def _chain_of(a: dict[int, bytes]) -> Chain:
    hook = parse_attrs(a.get(CHAIN_HOOK, b""))
    num = struct.unpack(">I", hook[HOOK_HOOKNUM][:4])[0] if HOOK_HOOKNUM in hook else None
    prio = struct.unpack(">i", hook[HOOK_PRIORITY][:4])[0] if HOOK_PRIORITY in hook else None
    return Chain(_text(a.get(CHAIN_NAME)), _text(hook.get(HOOK_DEV)), num, prio)


def _rule(msg: bytes, shapes: RuleShapes | None = None) -> tuple[str, str, Mark]:
    a = parse_attrs(msg, _NFGEN.size)
    table, chain = _text(a.get(RULE_TABLE)), _text(a.get(RULE_CHAIN))
    handle = struct.unpack(">Q", a[RULE_HANDLE][:8])[0] if RULE_HANDLE in a else 0
    udata = a.get(RULE_USERDATA, b"")
    note = ""
    if len(udata) >= 2 and udata[0] == UDATA_COMMENT:
        note = _text(udata[2: 2 + udata[1]])
    value, mask, jump = (shapes or RuleShapes()).read(a.get(RULE_EXPRESSIONS, b""))
    return table, chain, Mark(chain, note, value, mask, handle, jump)


def _read_exprs(blob: bytes) -> tuple[int | None, int | None, str]:
    """(mark value, mark mask, jump target) of a rule's expressions, parsed in full."""
    exprs = [parse_attrs(blob, s, e) for _kind, s, e in attr_spans(blob)]
    return (*_mark_of(exprs), _jump_of(exprs))


class RuleShapes:
    """Reads the expressions of many rules that differ in one field each.

    hookpack's rules have two shapes: the mark rule, whose value differs from tap to
    tap, and the jump rule, whose target's name does. The first rule of a shape is parsed
    in full, and its expressions with that field's bytes zeroed are remembered; a later
    rule equal to them byte for byte outside the same span is read from the span alone
    (a 1000-tap dump: 2000 rules, two shapes per name length)."""

    def __init__(self) -> None:
        self._spans: dict[tuple[int, int, int], None] = {}  # (length, start, end), ordered
        # (start, end, the expressions with that span zeroed) -> (mask, is_mark)
        self._known: dict[tuple[int, int, bytes], tuple[int | None, bool]] = {}

    def read(self, blob: bytes) -> tuple[int | None, int | None, str]:
        for length, start, end in self._spans:
            if length == len(blob):
                hit = self._known.get((start, end,
                                       blob[:start] + bytes(end - start) + blob[end:]))
                if hit is not None:
                    mask, is_mark = hit
                    if is_mark:
                        return _U32.unpack(blob[start:end])[0], mask, ""
                    return None, None, _text(blob[start:end])
        value, mask, jump = _read_exprs(blob)
        span = (_field_span(blob, *MARK_VALUE_AT) if value is not None
                else _field_span(blob, *JUMP_TARGET_AT) if jump else None)
        if span is not None:
            start, end = span
            field = blob[start:end]
            if ((value is not None and len(field) == 4 and _U32.unpack(field)[0] == value)
                    or (value is None and _text(field) == jump)):
                self._spans[(len(blob), start, end)] = None
                self._known[(start, end, blob[:start] + bytes(end - start) + blob[end:])] = \
                    (mask, value is not None)
        return value, mask, jump


# where the one field that differs is, in hookpack's two rules: (number of expressions,
# the expression, the attributes down to the field)
MARK_VALUE_AT = (3, 1, EXPR_DATA, BITWISE_XOR, DATA_VALUE)
JUMP_TARGET_AT = (1, 0, EXPR_DATA, IMMEDIATE_DATA, DATA_VERDICT, VERDICT_CHAIN)


def _field_span(blob: bytes, count: int, at: int, *path: int) -> tuple[int, int] | None:
    """The span of one field in a rule's expressions: in expression ``at`` of exactly
    ``count``, the attribute at ``path``."""
    exprs = attr_spans(blob)
    if len(exprs) != count:
        return None
    _kind, start, end = exprs[at]
    return _span_at(blob, start, end, *path)


def _jump_of(exprs: list[dict[int, bytes]]) -> str:
    """The target when the expressions are exactly one ``jump``."""
    if [_text(e.get(EXPR_NAME)) for e in exprs] != ["immediate"]:
        return ""
    data = parse_attrs(exprs[0].get(EXPR_DATA, b""))
    verdict = parse_attrs(parse_attrs(data.get(IMMEDIATE_DATA, b"")).get(DATA_VERDICT, b""))
    if verdict.get(VERDICT_CODE) != struct.pack(">i", NFT_JUMP):
        return ""
    return _text(verdict.get(VERDICT_CHAIN))


def _mark_of(exprs: list[dict[int, bytes]]) -> tuple[int | None, int | None]:
    """(value, mask) when the expressions are exactly hookpack's three."""
    names = [_text(e.get(EXPR_NAME)) for e in exprs]
    if names != ["meta", "bitwise", "meta"]:
        return None, None
    load, bitwise, store = (parse_attrs(e.get(EXPR_DATA, b"")) for e in exprs)
    if (load.get(META_KEY) != struct.pack(">I", META_MARK)
            or store.get(META_KEY) != struct.pack(">I", META_MARK)
            or META_SREG not in store):
        return None, None
    keep = parse_attrs(bitwise.get(BITWISE_MASK, b"")).get(DATA_VALUE)
    xor = parse_attrs(bitwise.get(BITWISE_XOR, b"")).get(DATA_VALUE)
    if keep is None or xor is None or len(keep) != 4 or len(xor) != 4:
        return None, None
    return struct.unpack("=I", xor)[0], ~struct.unpack("=I", keep)[0] & 0xFFFFFFFF


# ---- messages ----------------------------------------------------------------------------


class Msg(NamedTuple):  # a NamedTuple: a full apply makes 4000, a dataclass costs 3x
    type: int
    flags: int
    body: bytes
    what: str
    tap: str | None = None  # a message about one tap: its failure is that tap's
    chain: str | None = None  # the chain it writes

    def encode(self, seq: int, family: int = NFPROTO_NETDEV) -> bytes:
        payload = _NFGEN.pack(family, 0, 0) + self.body
        return _NLMSG.pack(_NLMSG.size + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | self.type,
                           NLM_F_REQUEST | self.flags, seq, 0) + payload


def new_table() -> Msg:
    return Msg(NEWTABLE, NLM_F_CREATE, _str(TABLE_NAME, TABLE), f"table netdev {TABLE}")


def del_table() -> Msg:
    return Msg(DELTABLE, 0, _str(TABLE_NAME, TABLE), f"table netdev {TABLE}")


def new_chain(tap: str) -> Msg:
    """The tap's base chain: on its ingress, policy accept."""
    hook = _nest(CHAIN_HOOK, _HOOK_HEAD, _str(HOOK_DEV, tap))
    body = _TABLE_ATTR + _str(CHAIN_NAME, tap) + hook + _BASE_TAIL
    return Msg(NEWCHAIN, NLM_F_CREATE, body, f"chain {tap}", tap, tap)


def new_record_chain(tap: str) -> Msg:
    name = record_name(tap)
    return Msg(NEWCHAIN, NLM_F_CREATE, _TABLE_ATTR + _str(CHAIN_NAME, name),
               f"chain {name}", tap, name)


def del_chain(chain: str, tap: str) -> Msg:
    return Msg(DELCHAIN, 0, _str(CHAIN_TABLE, TABLE) + _str(CHAIN_NAME, chain),
               f"chain {chain}", tap, chain)


def flush_chain(chain: str, tap: str) -> Msg:
    """Delete every rule of the chain (a DELRULE without a handle)."""
    return Msg(DELRULE, 0, _str(RULE_TABLE, TABLE) + _str(RULE_CHAIN, chain),
               f"rules of chain {chain}", tap, chain)


def _expr(name: str, *data: bytes) -> bytes:
    return _nest(LIST_ELEM, _str(EXPR_NAME, name), _nest(EXPR_DATA, *data))


# the parts every tap's messages share, encoded once (a full apply builds 4000 messages)
_TABLE_ATTR = _str(CHAIN_TABLE, TABLE)  # CHAIN_TABLE == RULE_TABLE
_HOOK_HEAD = _be32(HOOK_HOOKNUM, NF_NETDEV_INGRESS) + _be32(HOOK_PRIORITY, PRIORITY)
_BASE_TAIL = _be32(CHAIN_POLICY, NF_ACCEPT) + _str(CHAIN_TYPE, "filter")
_META_LOAD = _expr("meta", _be32(META_DREG, REG_1), _be32(META_KEY, META_MARK))
_META_STORE = _expr("meta", _be32(META_KEY, META_MARK), _be32(META_SREG, REG_1))
_JUMP_HEAD = _be32(VERDICT_CODE, NFT_JUMP)


def mark_expressions(value: int, mask: int) -> bytes:
    """meta mark set meta mark & ~mask | value"""
    return _nest(RULE_EXPRESSIONS, _META_LOAD, _bitwise_head(mask) + struct.pack("=I", value),
                 _META_STORE)


@functools.lru_cache(maxsize=8)
def _bitwise_head(mask: int) -> bytes:
    """The bitwise expression up to its XOR value, the value's 4 bytes being its last
    (a 4-byte attribute needs no padding, and every length is the same for any value)."""
    keep = struct.pack("=I", ~mask & 0xFFFFFFFF)
    whole = _expr("bitwise", _be32(BITWISE_SREG, REG_1), _be32(BITWISE_DREG, REG_1),
                  _be32(BITWISE_LEN, 4), _nest(BITWISE_MASK, attr(DATA_VALUE, keep)),
                  _nest(BITWISE_XOR, attr(DATA_VALUE, b"\0\0\0\0")))
    return whole[:-4]


def new_mark_rule(tap: str, value: int, mask: int, note: str) -> Msg:
    """The mark rule, in the tap's record chain."""
    raw = note.encode()
    if len(raw) > COMMENT_MAX:
        raise ValueError(f"comment {note[:40]!r}... is longer than {COMMENT_MAX} bytes")
    udata = bytes([UDATA_COMMENT, len(raw) + 1]) + raw + b"\0"
    name = record_name(tap)
    body = (_TABLE_ATTR + _str(RULE_CHAIN, name) + mark_expressions(value, mask)
            + attr(RULE_USERDATA, udata))
    return Msg(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"mark rule of {tap}", tap, name)


def new_jump_rule(tap: str) -> Msg:
    """``jump mark/<tap>`` in the tap's base chain."""
    verdict = _nest(DATA_VERDICT, _JUMP_HEAD, _str(VERDICT_CHAIN, record_name(tap)))
    exprs = _nest(RULE_EXPRESSIONS, _expr("immediate", _be32(IMMEDIATE_DREG, REG_VERDICT),
                                          _nest(IMMEDIATE_DATA, verdict)))
    body = _TABLE_ATTR + _str(RULE_CHAIN, tap) + exprs
    return Msg(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"jump rule of {tap}", tap, tap)


# ---- the socket --------------------------------------------------------------------------


class NftError(OSError):
    def __init__(self, code: int, text: str, what: str) -> None:
        self.what = what
        super().__init__(code, f"{what}: {os.strerror(code)}" + (f": {text}" if text else ""))


@record
class BatchResult:
    errors: list[tuple[Msg, int, str]] = field(default_factory=list)  # msg, errno, extack

    @property
    def ok(self) -> bool:
        return not self.errors


class Nft:
    """One NETLINK_NETFILTER socket: dumps of hookpack's table, atomic batches."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                                  NETLINK_NETFILTER)
        self.sock.settimeout(timeout)
        for force, plain, size in ((33, _socket.SO_RCVBUF, 8 << 20),
                                   (32, _socket.SO_SNDBUF, 4 << 20)):
            try:
                self.sock.setsockopt(_socket.SOL_SOCKET, force, size)
            except OSError:
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(_socket.SOL_SOCKET, plain, size)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
        self.sock.bind((0, 0))
        self.seq = 0
        self.writes = 0  # batches committed (kernel transactions)
        self.reads = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Nft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> list[tuple[int, int, bytes]]:
        data = self.sock.recv(1 << 20)
        out = []
        pos = 0
        while pos + _NLMSG.size <= len(data):
            length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, pos)
            if length < _NLMSG.size:
                break
            out.append((seq, mtype, data[pos + _NLMSG.size: pos + length]))
            pos += _align(length)
        return out

    def _dump(self, mtype: int, body: bytes = b"") -> list[bytes]:
        self.seq += 1
        self.reads += 1
        seq = self.seq
        self.sock.send(Msg(mtype, NLM_F_DUMP, body, "dump").encode(seq))
        out: list[bytes] = []
        while True:
            for rseq, rtype, msg in self._recv():
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return out
                if rtype == NLMSG_ERROR:
                    code, text = _error(msg)
                    if code:
                        raise NftError(code, text, "nf_tables dump")
                    return out
                out.append(msg)

    def table_exists(self) -> bool:
        self.seq += 1
        self.reads += 1
        seq = self.seq
        self.sock.send(Msg(GETTABLE, NLM_F_ACK, _str(TABLE_NAME, TABLE), "table").encode(seq))
        found = False
        while True:
            for rseq, rtype, msg in self._recv():
                if rseq != seq:
                    continue
                if rtype == NLMSG_ERROR:
                    code, text = _error(msg)
                    if code and code != 2:  # ENOENT: no table
                        raise NftError(code, text, f"table netdev {TABLE}")
                    return found and not code
                found = True

    def chains(self) -> dict[str, Chain]:
        """The chains of hookpack's table (a dump lists the family's chains: filtered)."""
        out = {}
        for msg in self._dump(GETCHAIN):
            a = parse_attrs(msg, _NFGEN.size)
            if _text(a.get(CHAIN_TABLE)) == TABLE:
                chain = _chain_of(a)
                out[chain.name] = chain
        return out

    def marks(self) -> dict[str, list[Mark]]:
        """chain -> its rules, read back."""
        out: dict[str, list[Mark]] = {}
        shapes = RuleShapes()
        for msg in self._dump(GETRULE, _str(RULE_TABLE, TABLE)):
            table, chain, mark = _rule(msg, shapes)
            if table == TABLE:
                out.setdefault(chain, []).append(mark)
        return out

    def batch(self, msgs: Sequence[Msg]) -> BatchResult:
        """One transaction: all of ``msgs`` or none. Errors name their message."""
        result = BatchResult()
        if not msgs:
            return result
        data = bytearray()
        self.seq += 1
        data += _batch_mark(NFNL_MSG_BATCH_BEGIN, self.seq)
        by_seq: dict[int, Msg] = {}
        for msg in msgs:
            self.seq += 1
            by_seq[self.seq] = msg
            data += msg.encode(self.seq)
        self.seq += 1
        data += _batch_mark(NFNL_MSG_BATCH_END, self.seq)
        self.sock.send(bytes(data))
        # the batch is handled inside sendmsg: a NOOP answered after it closes it
        self.seq += 1
        barrier = self.seq
        self.sock.send(_NLMSG.pack(_NLMSG.size, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK,
                                   barrier, 0))
        self.writes += 1
        while True:
            for seq, mtype, body in self._recv():
                if seq == barrier:
                    return result
                if mtype == NLMSG_ERROR and seq in by_seq:
                    code, text = _error(body)
                    if code:
                        result.errors.append((by_seq[seq], code, text))


def _batch_mark(mtype: int, seq: int) -> bytes:
    body = _NFGEN.pack(_socket.AF_UNSPEC, 0, _socket.htons(NFNL_SUBSYS_NFTABLES))
    return _NLMSG.pack(_NLMSG.size + len(body), mtype, NLM_F_REQUEST, seq, 0) + body


def _error(msg: bytes) -> tuple[int, str]:
    code = -struct.unpack_from("=i", msg, 0)[0]
    text = ""
    start = 4 + _NLMSG.size
    if len(msg) > start:
        text = _text(parse_attrs(msg, start).get(1))  # NLMSGERR_ATTR_MSG
    return code, text


def drop_tap(tap: str, have: TapChains) -> list[Msg]:
    """Messages removing what exists of the tap's chains (the base chain first: its
    jump holds the record)."""
    msgs = []
    if have.base:
        msgs += [flush_chain(tap, tap), del_chain(tap, tap)]
    if have.record:
        name = record_name(tap)
        msgs += [flush_chain(name, tap), del_chain(name, tap)]
    return msgs


def set_tap(tap: str, value: int, mask: int, note: str, have: TapChains) -> list[Msg]:
    """Messages making the tap's two chains exactly: the record with its one mark rule,
    the base chain on the tap's ingress with its one jump (a base chain on the wrong
    hook is made again: a chain's hook cannot be changed)."""
    name = record_name(tap)
    msgs = [flush_chain(name, tap) if have.record else new_record_chain(tap),
            new_mark_rule(tap, value, mask, note)]
    if have.base:
        msgs.append(flush_chain(tap, tap))
        if not have.base_on_tap:
            msgs.append(del_chain(tap, tap))
    if not have.base or not have.base_on_tap:
        msgs.append(new_chain(tap))
    msgs.append(new_jump_rule(tap))
    return msgs


def tap_batch(add: Iterable[tuple[str, int, int, str, TapChains]],
              delete: Iterable[tuple[str, TapChains]], *, table: bool) -> list[Msg]:
    """Messages for: the table (when missing), taps whose chains go, and per tap
    ``(tap, value, mask, comment, what exists)`` its two chains."""
    msgs = [new_table()] if table else []
    for tap, have in delete:
        msgs += drop_tap(tap, have)
    for tap, value, mask, note, have in add:
        msgs += set_tap(tap, value, mask, note, have)
    return msgs

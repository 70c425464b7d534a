"""The kernel's counters of one HTB class (TCA_STATS2 of an RTM_GETTCLASS answer).

``bytes``/``packets`` come from TCA_STATS_BASIC (``gnet_stats_basic``; TCA_STATS_PKT64
replaces the 32-bit packet count when the kernel sends it), ``drops``/``overlimits``/
``requeues``/``backlog``/``qlen`` from TCA_STATS_QUEUE (``gnet_stats_queue``), as
``tc -s class show`` prints them (linux/gen_stats.h).
"""

from __future__ import annotations

import struct

from hookpack.actions.shaping.tc import TcObject, parse_attrs
from hookpack.record import asdict, record

TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 1, 3, 8
_BASIC = struct.Struct("=QI")  # bytes, packets
_QUEUE = struct.Struct("=IIIII")  # qlen, backlog, drops, requeues, overlimits


@record(frozen=True)
class Counters:
    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0
    requeues: int = 0
    backlog: int = 0  # bytes queued right now
    qlen: int = 0  # packets queued right now

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def counters(obj: TcObject) -> Counters:
    """The counters of a class (all zero when the kernel sent no statistics)."""
    stats = parse_attrs(obj.raw_stats) if obj.raw_stats else {}
    sent = packets = 0
    basic = stats.get(TCA_STATS_BASIC)
    if basic and len(basic) >= _BASIC.size:
        sent, packets = _BASIC.unpack_from(basic)
    pkt64 = stats.get(TCA_STATS_PKT64)
    if pkt64 and len(pkt64) >= 8:
        packets = struct.unpack_from("=Q", pkt64)[0]
    qlen = backlog = drops = requeues = overlimits = 0
    queue = stats.get(TCA_STATS_QUEUE)
    if queue and len(queue) >= _QUEUE.size:
        qlen, backlog, drops, requeues, overlimits = _QUEUE.unpack_from(queue)
    return Counters(int(sent), int(packets), drops, overlimits, requeues, backlog, qlen)

"""Desired shaping state: rates in bytes/s, HTB parameters per tap, class ids per tap.

Units follow tc(8): ``kbit`` is 1000 bit/s, ``mbit`` 10^6 bit/s, ``kbps`` 1000 bytes/s
(the seed's 1024*1024 "mbit" is 4.9 % off what tc and iperf3 call a megabit).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from hookpack.errors import BadInput
from hookpack.record import record

QUANTUM_MIN = 1000  # HTB's own clamp range when it computes quanta from r2q
QUANTUM_MAX = 200000
MINOR_ROOT = 1  # the uplink's root class: uplink_rate over every other class
MINOR_HOST = 2  # the host's own traffic (and anything unclassified): the qdisc's default
MINOR_DEFAULT = MINOR_HOST
MINOR_FIRST = 0x10  # first class minor handed to a tap
MINOR_LAST = 0x7FFF  # tap minors stay below 0x8000 ...
INSTANCE_BIT = 0x8000  # ... an instance's parent class is its lowest tap minor | 0x8000
TAP_MINOR = 1  # the single class of a tap's own (to-VM) HTB
# One HTB prio for all: HTB serves every class within its own rate (the host's
# host_rate, each VM's guarantee) before any borrowing, and shares what is left among
# the borrowers by quantum (equal: ~one MTU each). A lower prio for the host would also
# hand it everything spare first: a migration would starve the VMs (measured: VMs at
# their 1 Mbit/s guarantee while the host took 97 of 100 Mbit/s).
PRIO_HOST = PRIO_VM = 0

_UNITS = {
    "bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8, "tbit": 1e12 / 8,
    "bps": 1, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
}
_RATE = re.compile(r"(?P<num>[0-9]{1,7}(?:\.[0-9]{1,3})?)(?P<unit>[a-z]{3,4})")
MIN_RATE = 1000  # bytes/s (8 kbit): below that HTB's arithmetic is meaningless
MAX_RATE = 10**12 // 8  # 1 Tbit


def parse_rate(text: str) -> int:
    """A tc-style rate ("50mbit", "1.5gbit", "800kbps") as bytes/s; strict."""
    value = text.strip().lower() if isinstance(text, str) else ""
    match = _RATE.fullmatch(value)
    if not match or match["unit"] not in _UNITS:
        raise BadInput(f"rate {text!r} is not a number with a unit "
                       f"({', '.join(_UNITS)}), e.g. 50mbit")
    rate = round(float(match["num"]) * _UNITS[match["unit"]])
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadInput(f"rate {text!r} is outside 8kbit..1tbit")
    return rate


@functools.lru_cache(maxsize=256)
def format_rate(rate: int) -> str:
    bits = rate * 8
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size and bits % (size // 1000 or 1) == 0:
            return f"{bits / size:g}{unit}"
    return f"{bits}bit"


@record(frozen=True)
class ClassParams:
    """One HTB class: ``rate`` guaranteed, ``ceil`` the hard limit, bursts, quantum, prio."""

    rate: int  # bytes/s
    ceil: int
    burst: int  # bytes
    cburst: int
    quantum: int
    prio: int = 0


@functools.lru_cache(maxsize=1024)
def class_params(rate: int, mtu: int, ceil: int | None = None, prio: int = 0) -> ClassParams:
    """burst = rate/100 (10 ms worth, the seed's rule from tc-htb(8)), never below one MTU;
    cburst the same of ceil (default: ceil = rate, no borrowing); quantum = rate/r2q with
    r2q = rate/MTU (at least 1), i.e. about one MTU, clamped to HTB's sane range
    1000..200000 and set explicitly so classes of different rates under one qdisc (whose
    r2q is single) get no kernel "quantum is big/small" warning."""
    ceil = rate if ceil is None else max(ceil, rate)
    burst = max(rate // 100, mtu)
    cburst = max(ceil // 100, mtu)
    r2q = max(1, rate // mtu)
    quantum = min(QUANTUM_MAX, max(QUANTUM_MIN, rate // r2q))
    return ClassParams(rate, ceil, burst, cburst, quantum, prio)


def vm_class(limit: int, guaranteed: int, mtu: int) -> ClassParams:
    """A VM's class under the root: ``ceil`` = its limit (hard), ``rate`` = the smaller of
    the limit and the guaranteed share. Above its guarantee the VM borrows from the root
    class, which is capped at uplink_rate and serves the host's class first: that is
    what keeps the host's share however many VMs send (a class sending within its own
    rate is never held back by its parent in HTB, so VM rates must stay small)."""
    return class_params(min(limit, guaranteed), mtu, limit, PRIO_VM)


def uplink_classes(uplink_rate: int, host_rate: int, mtu: int
                   ) -> tuple[ClassParams, ClassParams]:
    """(root, host): the root class at uplink_rate; the host's class guaranteed
    host_rate (served before any borrowing), borrowing up to the whole uplink."""
    root = class_params(uplink_rate, mtu)
    host = class_params(min(host_rate, uplink_rate), mtu, uplink_rate, PRIO_HOST)
    return root, host


def qdisc_r2q(rate: int, mtu: int) -> int:
    """r2q for the qdisc (only used by classes without an explicit quantum: none of ours)."""
    return max(1, rate // mtu)


def instance_minor(tap_minors: Iterable[int]) -> int:
    """The minor of an instance's parent class (egress per instance): its lowest tap
    minor with the 0x8000 bit. Unique because tap minors are, and found again from the
    rules alone (an instance-scoped run never needs a dump of every class)."""
    return min(tap_minors) | INSTANCE_BIT


def allocate_minors(taps: Iterable[str], kept: Mapping[str, int],
                    taken: Iterable[int]) -> dict[str, int]:
    """Class minors for ``taps``: a tap that already has one keeps it; new taps get the
    lowest free minors. ``taken`` are minors in use by objects outside this reconcile's
    scope (other instances' classes) which must not be handed out. A kept minor that is
    taken, or kept by a tap sorted before it (two taps with one mark would share one
    class), is not kept: that tap gets a fresh one."""
    used = set(taken)
    out: dict[str, int] = {}
    fresh = []
    for tap in sorted(taps):
        if tap in kept and kept[tap] not in used:
            out[tap] = kept[tap]
            used.add(kept[tap])
        else:
            fresh.append(tap)
    candidate = MINOR_FIRST
    for tap in fresh:
        while candidate in used:
            candidate += 1
        if candidate > MINOR_LAST:
            raise BadInput("no free class ids left on the uplink (32000 taps?)")
        out[tap] = candidate
        used.add(candidate)
    return out

"""The qdisc under every class: keeps the queueing delay of a saturated class bounded.

HTB gives each new class a pfifo of the device's ``txqueuelen`` packets (1000): a VM
filling its 10 Mbit/s class then waits ~1.2 s behind its own queue (ping, DNS, its own
TCP acks). hookpack puts a leaf qdisc under each class instead:

- ``fq_codel`` where the kernel has it (Debian's kernels): per-flow queues and CoDel
  (target 5 ms): a sparse flow (ping, DNS) passes a bulk one, a standing queue is cut.
- else ``tbf`` used only for what it does besides rate limiting: it segments a GSO
  packet (a 64 KB TCP super-packet from a VM with offloads, or from GRO on the way)
  larger than its burst into MTU-sized frames, and queues them in a bfifo of
  ``leaf_delay_ms`` worth of bytes at the class's ceil. Its own rate is 1 Tbit/s, so
  HTB does the limiting. A plain ``bfifo`` that small drops whole 64 KB
  packets: measured, a 10 Mbit/s TCP upload then reached 5.6-6.3 Mbit/s.

``leaf_qdisc`` in the config: ``auto`` (probe), ``fq_codel``, ``tbf``, ``bfifo`` or
``default`` (leave HTB's own pfifo: no bound). The probe runs once per kernel boot, in
a throwaway network namespace, cached in ``<run_dir>/shaping-leaf.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hookpack.actions.shaping.tc import Leaf

CLONE_NEWNET = 0x40000000
_CACHE = "shaping-leaf.json"
PROBED = ("fq_codel", "tbf")
# the tbf leaf's own rate: 1 Tbit/s, so that its two-frame bucket refills in 24 ns and
# it never holds a packet back (HTB does the limiting). Measured: at ten times the
# class's limit, a 500 Mbit/s class reached 282-454 Mbit/s on a loaded machine (the
# tbf throttled between HTB's dequeues and waited for its timer).
TBF_RATE = 10**12 // 8


def _probe_here() -> dict[str, bool]:
    """In a fresh network namespace: can a qdisc of each kind be made on loopback?"""
    import ctypes  # the probe runs in a child, rarely: kept off the hook's hot path

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    from hookpack.actions.shaping import tc

    lo = tc.ifindex("lo") or 1
    out = {}
    with tc.Netlink() as nl:
        for kind in PROBED:
            leaf = leaf_for(kind, 125000, 1500, 10)
            assert leaf is not None
            req = tc.Request(tc.RTM_NEWQDISC, tc.NLM_F_CREATE | tc.NLM_F_REPLACE, lo, 0,
                             tc.TC_H_ROOT, 0, tc.leaf_options(leaf), f"probe {kind}")
            (reply,) = nl.transact([req])
            out[kind] = reply.error == 0
    return out


def probe_in_child() -> dict[str, Any]:
    from hookpack.actions.shaping.classifier import probe_in_child as run_in_child

    return run_in_child(_probe_here)


def probe(run_dir: Path, refresh: bool = False) -> dict[str, Any]:
    """Which leaf kinds this kernel has (cached per kernel release and boot)."""
    path = run_dir / _CACHE
    from hookpack.actions.shaping.classifier import kernel_key

    key = kernel_key()
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("kernel") == key:
                return dict(cached["result"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    result = probe_in_child()
    if "error" not in result:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"kernel": key, "result": result}))
            os.replace(tmp, path)
        except OSError:
            pass
    return result


def choose(setting: str, run_dir: Path) -> tuple[str, str]:
    """(kind, why): the leaf kind to use and the reason, for logs and ``doctor``."""
    if setting != "auto":
        return setting, "set in the configuration"
    found = probe(run_dir)
    if found.get("fq_codel"):
        return "fq_codel", "the kernel has sch_fq_codel"
    if "error" in found:
        return "tbf", f"probe failed ({found['error']}): segmenting tbf + bounded fifo"
    return "tbf", "no sch_fq_codel in this kernel: segmenting tbf + fifo of leaf_delay_ms"


def leaf_for(kind: str, ceil: int, mtu: int, delay_ms: int) -> Leaf | None:
    """The leaf a class of ``ceil`` bytes/s gets; None: leave HTB's default pfifo."""
    if kind == "default":
        return None
    limit = max(2 * (mtu + 14), ceil * delay_ms // 1000)
    if kind == "bfifo":
        return Leaf("bfifo", limit)
    if kind == "tbf":
        return Leaf("tbf", limit, TBF_RATE, 2 * (mtu + 14))
    return Leaf(kind)

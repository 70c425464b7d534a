"""Leak check: the kernel objects and processes the testbed could leave behind.

Only the testbed's own objects are counted, recognised by what it gives them:
namespaces named ``hpt-<owner>-...``, processes carrying ``VMTESTBED_OWNER``,
loop devices backed by files under ``hpt-loop-<owner>-...``. Taps, bridges and
veths live inside those namespaces and go with them; as a safety net the root
namespace's taps (a tap whose namespace vanished while QEMU held it) and any
``hpt*`` link there are counted too.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmtestbed import disks, host


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    pids: frozenset[int]
    loops: frozenset[str]
    root_links: frozenset[str]

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(self.netns - other.netns, self.pids - other.pids,
                        self.loops - other.loops, self.root_links - other.root_links)

    def __bool__(self) -> bool:
        return bool(self.netns or self.pids or self.loops or self.root_links)

    def describe(self) -> str:
        parts = []
        if self.netns:
            parts.append(f"namespaces {sorted(self.netns)}")
        if self.pids:
            parts.append(f"processes {sorted(self.pids)}")
        if self.loops:
            parts.append(f"loop devices {sorted(self.loops)}")
        if self.root_links:
            parts.append(f"links in the root namespace {sorted(self.root_links)}")
        return "; ".join(parts) or "nothing"


def snapshot(owner: str | None = None) -> Snapshot:
    """The testbed objects that exist now; only ``owner``'s (a pid tag) if given."""
    ns_prefix = f"{host.NAME_PREFIX}{owner}-" if owner else host.NAME_PREFIX
    netns_dir = Path("/run/netns")
    netns = frozenset(p.name for p in netns_dir.iterdir()
                      if p.name.startswith(ns_prefix)) if netns_dir.exists() else frozenset()
    pids = frozenset(pid for pid, o in host.owned_pids().items() if owner in (None, o))
    loop_marker = f"/{disks.LOOP_DIR_PREFIX}{owner}-" if owner else f"/{disks.LOOP_DIR_PREFIX}"
    loops = frozenset(f"{dev} ({back})" for dev, back in disks.loop_devices().items()
                      if loop_marker in back)
    return Snapshot(netns, pids, loops, _root_links())


def _root_links() -> frozenset[str]:
    out = host.run(["ip", "-d", "-j", "link", "show"]).stdout
    found = set()
    for link in json.loads(out or "[]"):
        name = link.get("ifname", "")
        kind = link.get("linkinfo", {}).get("info_kind")
        if name.startswith(host.NAME_PREFIX.rstrip("-")) or kind == "tun":
            found.add(name)
    return frozenset(found)


def stale(protected_netns: set[str], protected_pids: set[int]) -> Snapshot:
    """Testbed objects whose owner process is gone (a run killed with SIGKILL).

    ``protected_*`` are objects of testbeds brought up by ``vm-testbed up``, whose
    owner (the finished command) is gone on purpose.
    """
    def owner_dead(owner: str) -> bool:
        return owner.isdigit() and not host.pid_alive(int(owner))

    snap = snapshot()
    netns = frozenset(n for n in snap.netns if n not in protected_netns
                      and owner_dead(n.removeprefix(host.NAME_PREFIX).split("-")[0]))
    owners = host.owned_pids()
    pids = frozenset(p for p in snap.pids if p not in protected_pids and owner_dead(owners[p]))
    loops = frozenset(
        loop for loop in snap.loops
        if owner_dead(loop.split(f"/{disks.LOOP_DIR_PREFIX}", 1)[1].split("-")[0])
    )
    return Snapshot(netns, pids, loops, frozenset())


def stale_tempdirs() -> list[Path]:
    """``$TMPDIR/hpt-<pid>-*`` work directories (KVM roots, netnode dirs) of dead owners."""
    found = []
    for d in Path(tempfile.gettempdir()).glob(f"{host.NAME_PREFIX}*-*"):
        owner = d.name.removeprefix(host.NAME_PREFIX).split("-")[0]
        if d.is_dir() and owner.isdigit() and not host.pid_alive(int(owner)):
            found.append(d)
    return found

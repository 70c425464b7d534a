"""The host's CPU topology from sysfs: NUMA nodes, online CPUs, SMT siblings.

Read from ``<sysfs>/devices/system/node/node<N>/cpulist`` (CPUs of each NUMA node),
``<sysfs>/devices/system/cpu/online``,
``<sysfs>/devices/system/cpu/cpu<N>/topology/thread_siblings_list`` (the hardware
threads of one core) and ``<sysfs>/devices/system/cpu/isolated`` (``isolcpus=``).
An offline CPU has no ``topology/`` directory; it is left out everywhere. A kernel
built without NUMA has no ``node/`` directory: then all online CPUs form node 0.
(Documentation/ABI/stable/sysfs-devices-node and Documentation/admin-guide/cputopology.rst
in the kernel tree.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hookpack.errors import ActionError, BadInput
from hookpack.record import record

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_CPU = 1 << 16


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse the kernel's cpulist syntax (``0-3,8-11``, ``5``, empty) into CPU ids.

    Also accepts the stride form ``0-7:2`` that the kernel accepts on input.
    """
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        stride = 1
        if ":" in part:
            part, _, step = part.partition(":")
            if not (step.isascii() and step.isdigit()) or int(step) < 1:
                raise BadInput(f"cpulist {text.strip()!r}: bad stride {step!r}")
            stride = int(step)
        match = _RANGE.match(part)
        if not match:
            raise BadInput(f"cpulist {text.strip()!r}: {part!r} is not a CPU or a range")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low or high >= MAX_CPU:
            raise BadInput(f"cpulist {text.strip()!r}: bad range {part!r}")
        cpus.update(range(low, high + 1, stride))
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """The kernel's compact form: ``[0, 1, 2, 3, 8]`` -> ``0-3,8``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


@record(frozen=True)
class Topology:
    """Online CPUs by NUMA node, and each online CPU's core (its SMT siblings)."""

    nodes: dict[int, tuple[int, ...]]  # node id -> its online CPUs, sorted
    siblings: dict[int, tuple[int, ...]]  # cpu -> online CPUs of its core (incl. itself)
    isolated: frozenset[int] = frozenset()  # online CPUs of isolcpus= (cpu/isolated)

    @property
    def online(self) -> frozenset[int]:
        return frozenset(self.siblings)

    def node_of(self, cpu: int) -> int:
        for node, cpus in self.nodes.items():
            if cpu in cpus:
                return node
        raise KeyError(cpu)

    def core_of(self, cpu: int) -> int:
        """A core's id: its lowest online CPU."""
        return self.siblings[cpu][0]

    def describe(self) -> str:
        smt = max((len(s) for s in self.siblings.values()), default=1)
        return (f"{len(self.nodes)} NUMA node(s), {len(self.siblings)} online CPU(s), "
                f"{smt} thread(s) per core")


def read_topology(sysfs_root: Path) -> Topology:
    """Read the topology under ``sysfs_root`` (``/sys`` on a real host)."""
    cpu_dir = sysfs_root / "devices" / "system" / "cpu"
    try:
        online = parse_cpulist((cpu_dir / "online").read_text())
    except OSError as err:
        raise ActionError(f"{cpu_dir / 'online'}: cannot read the online CPUs: "
                          f"{err.strerror}") from None
    if not online:
        raise ActionError(f"{cpu_dir / 'online'}: no online CPU listed")
    siblings: dict[int, tuple[int, ...]] = {}
    for cpu in sorted(online):
        path = cpu_dir / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            group = parse_cpulist(path.read_text()) & online
        except FileNotFoundError:
            group = frozenset()
        siblings[cpu] = tuple(sorted(group | {cpu}))
    nodes: dict[int, tuple[int, ...]] = {}
    node_dir = sysfs_root / "devices" / "system" / "node"
    if node_dir.is_dir():
        for entry in node_dir.iterdir():
            match = re.fullmatch(r"node(\d+)", entry.name)
            if not match:
                continue
            try:
                cpus = parse_cpulist((entry / "cpulist").read_text()) & online
            except FileNotFoundError:
                continue
            if cpus:  # memory-only nodes (CXL, offlined sockets) hold no CPU
                nodes[int(match.group(1))] = tuple(sorted(cpus))
    placed = {cpu for cpus in nodes.values() for cpu in cpus}
    if not nodes:
        nodes = {0: tuple(sorted(online))}
    elif placed != online:
        # An online CPU in no node: should not happen; keep it usable, in node 0's stead.
        stray = tuple(sorted(online - placed))
        first = min(nodes)
        nodes[first] = tuple(sorted(nodes[first] + stray))
    return Topology(nodes=dict(sorted(nodes.items())), siblings=siblings,
                    isolated=_isolated(cpu_dir) & online)


def _isolated(cpu_dir: Path) -> frozenset[int]:
    """CPUs taken out of the scheduler's balancing by ``isolcpus=`` (empty if none)."""
    try:
        return parse_cpulist((cpu_dir / "isolated").read_text())
    except (OSError, BadInput):
        return frozenset()

"""Pinning as it is, per vCPU: thread id (QMP), current affinity, NUMA node, and whether
it is what the pinning action would set now; and the QEMU's resident memory per NUMA node
(``/proc/<pid>/numa_maps``) beside the node(s) its vCPUs are on.

Read-only and lock-free: the plan is computed exactly as ``hookpack pinning plan``
does (against the other instances as they are) but nothing is applied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookpack.actions.pinning.allocate import Policy
from hookpack.actions.pinning.memory import node_usage
from hookpack.actions.pinning.topology import Topology, format_cpulist, read_topology
from hookpack.errors import HookpackError
from hookpack.record import field, record


@record
class VcpuView:
    index: int
    thread_id: int
    cpus: list[int] | None = None  # its affinity (os.sched_getaffinity)
    numa_nodes: list[int] | None = None
    want: list[int] | None = None  # what the pinning action would set (None: no opinion)
    error: str | None = None

    @property
    def match(self) -> bool | None:
        if self.want is None or self.cpus is None:
            return None
        return self.cpus == self.want

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "thread_id": self.thread_id, "cpus": self.cpus,
                "numa_nodes": self.numa_nodes, "want": self.want, "match": self.match,
                "error": self.error}


@record
class PinningView:
    cpu_mask: str = "all"
    mode: str | None = None  # the plan's mode: "pinned" | "floating"; None: no plan
    vcpus: list[VcpuView] = field(default_factory=list)
    note: str | None = None
    error: str | None = None
    memory: dict[int, int] = field(default_factory=dict)  # resident bytes per NUMA node

    @property
    def vcpu_nodes(self) -> list[int]:
        return sorted({n for v in self.vcpus for n in (v.numa_nodes or [])})

    @property
    def local_share(self) -> float | None:
        """Share of the resident memory on the node(s) of the vCPUs."""
        total = sum(self.memory.values())
        if not total or not self.vcpu_nodes:
            return None
        return sum(self.memory.get(n, 0) for n in self.vcpu_nodes) / total

    def to_json(self) -> dict[str, Any]:
        share = self.local_share
        return {"cpu_mask": self.cpu_mask, "mode": self.mode, "note": self.note,
                "error": self.error, "vcpus": [v.to_json() for v in self.vcpus],
                "memory": {"per_node": {str(n): b for n, b in self.memory.items()},
                           "vcpu_nodes": self.vcpu_nodes,
                           "local_share": None if share is None else round(share, 4)}}

    def memory_line(self) -> str:
        from hookpack.actions.pinning.memory import describe_usage

        nodes = ",".join(map(str, self.vcpu_nodes)) or "?"
        share = self.local_share
        local = "" if share is None else f" ({share:.0%} local)"
        return f"memory: {describe_usage(self.memory)}; vCPUs on node {nodes}{local}"


def numa_nodes(topo: Topology, cpus: set[int]) -> list[int]:
    return sorted({topo.node_of(c) for c in cpus if c in topo.online})


def affinity(tid: int) -> set[int]:
    """The thread's affinity (sched_getaffinity(2) takes a thread id on Linux)."""
    return set(os.sched_getaffinity(tid))


def observe(name: str, *, kvm_dir: Path, proc_root: Path, sysfs_root: Path,
            policy: Policy, vcpu_tids: Callable[[], list[int]]) -> PinningView:
    """``vcpu_tids`` asks QEMU (QMP ``query-cpus-fast``) for the vCPU thread ids."""
    from hookpack.actions.pinning import node as pnode
    from hookpack.actions.pinning.threads import running_instances

    view = PinningView(cpu_mask=pnode.runtime_cpu_mask(kvm_dir, name))
    procs = running_instances(kvm_dir, proc_root)
    if name not in procs:
        view.error = "no running QEMU for it on this node"
        return view
    try:
        tids = vcpu_tids()
    except HookpackError as err:  # QmpUnavailable, QmpBusy, QmpError
        view.error = f"QEMU: {err}"
        return view
    topo = read_topology(sysfs_root)
    view.memory = node_usage(proc_root, procs[name].pid)
    want = _wanted(name, kvm_dir, proc_root, sysfs_root, policy, tids, procs, view)
    for index, tid in enumerate(tids):
        vv = VcpuView(index, tid, want=want.get(tid))
        try:
            cpus = affinity(tid)
        except ProcessLookupError:
            vv.error = f"thread {tid} is gone"
        except OSError as err:
            vv.error = f"thread {tid}: {err.strerror}"
        else:
            vv.cpus = sorted(cpus)
            vv.numa_nodes = numa_nodes(topo, cpus)
        view.vcpus.append(vv)
    return view


def _wanted(name: str, kvm_dir: Path, proc_root: Path, sysfs_root: Path, policy: Policy,
            tids: list[int], procs: dict[str, Any], view: PinningView) -> dict[int, list[int]]:
    from hookpack.actions.pinning import node as pnode

    if view.cpu_mask != "all":
        view.note = f"cpu_mask {view.cpu_mask!r} set: left alone by the pinning action"
        return {}
    state = pnode.observe_node(sysfs_root, kvm_dir, proc_root, {name: tids}, processes=procs)
    if name not in state.observed:
        return {}
    outcome = pnode.pin_instance(state, name, policy)
    plan = outcome.plans[0]
    view.mode = plan.mode
    view.note = plan.summary()
    return {tid: sorted(cpus) for tid, (cpus, _role) in
            pnode.desired(plan, state.observed[name]).items()}


def describe(vv: VcpuView) -> str:
    if vv.error:
        return f"vcpu {vv.index} tid {vv.thread_id}: {vv.error}"
    assert vv.cpus is not None
    nodes = ",".join(map(str, vv.numa_nodes or [])) or "?"
    if vv.match is None:
        verdict = ""
    elif vv.match:
        verdict = " ok"
    else:
        verdict = f" MISMATCH (pinning wants {format_cpulist(vv.want or [])})"
    return (f"vcpu {vv.index} tid {vv.thread_id}: CPUs {format_cpulist(vv.cpus)} "
            f"(NUMA {nodes}){verdict}")

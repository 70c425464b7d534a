"""Observe the node, plan, apply: what the hook and the CLI share.

Callers hold the node-wide lock (``hookpack.locks.node_lock(run_dir, "pinning")``)
around observe + plan + apply: hooks for different instances run concurrently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hookpack import debugpoints
from hookpack.pinning.affinity import set_affinity
from hookpack.pinning.allocate import PINNED, Plan, Policy, Request, plan_instance, plan_node
from hookpack.pinning.threads import Observed, Process, observe_process, running_instances
from hookpack.pinning.topology import Topology, format_cpulist, read_topology


@dataclass(frozen=True)
class Move:
    """One thread's affinity change."""

    instance: str
    tid: int
    old: frozenset[int]
    new: frozenset[int]
    role: str  # "vcpu N", "emulator", "floating", "trim"

    def describe(self) -> str:
        return (f"{self.instance} thread {self.tid} ({self.role}): "
                f"{format_cpulist(self.old)} -> {format_cpulist(self.new)}")


@dataclass
class Outcome:
    plans: list[Plan]
    moves: list[Move]
    done: list[Move] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NodeState:
    topo: Topology
    observed: dict[str, Observed]  # every running instance
    cpu_masks: dict[str, str]  # instance -> cpu_mask ("all" when unknown)

    def taken(self, exclude: str = "") -> dict[int, str]:
        """CPUs dedicated (1:1 vCPU affinity) to instances other than ``exclude``."""
        return {cpu: name for name, obs in self.observed.items() if name != exclude
                for cpu in obs.dedicated}

    def held(self, exclude: str = "") -> frozenset[int]:
        """CPUs a whole 1-vCPU QEMU sits on: no other vCPU goes there."""
        return frozenset(obs.held for name, obs in self.observed.items()
                         if name != exclude and obs.held is not None)

    def vcpus(self, exclude: str = "") -> int:
        return sum(obs.vcpus for name, obs in self.observed.items() if name != exclude)


def runtime_cpu_mask(kvm_dir: Path, name: str) -> str:
    """``cpu_mask`` from ``conf/<inst>.runtime``: Ganeti 3.0 writes the JSON list
    ``[kvm_cmd, nics, hvparams, disks]`` (hv_kvm._SaveKVMRuntime at v3.0.2)."""
    try:
        data = json.loads((kvm_dir / "conf" / f"{name}.runtime").read_text())
    except (OSError, ValueError):
        return "all"
    if isinstance(data, list) and len(data) > 2 and isinstance(data[2], dict):
        mask = data[2].get("cpu_mask", "all")
        return mask if isinstance(mask, str) else "all"
    return "all"


def observe_node(sysfs_root: Path, kvm_dir: Path, proc_root: Path,
                 vcpu_tids: Mapping[str, list[int]] | None = None,
                 processes: Mapping[str, Process] | None = None) -> NodeState:
    """Topology + every running instance's threads (vCPU tids from QMP where given)."""
    topo = read_topology(sysfs_root)
    procs = processes if processes is not None else running_instances(kvm_dir, proc_root)
    given = vcpu_tids or {}
    observed = {name: observe_process(proc_root, proc, given.get(name))
                for name, proc in procs.items()}
    masks = {name: runtime_cpu_mask(kvm_dir, name) for name in procs}
    return NodeState(topo, observed, masks)


def desired(plan: Plan, obs: Observed) -> dict[int, tuple[frozenset[int], str]]:
    """Every thread's wanted affinity (and its role) under ``plan``."""
    want: dict[int, tuple[frozenset[int], str]] = {}
    if plan.mode == PINNED:
        vcpu_of = {tid: i for i, tid in enumerate(obs.vcpu_tids)}
        for tid in obs.affinities:
            if tid in vcpu_of:
                want[tid] = (frozenset({plan.vcpu_cpus[vcpu_of[tid]]}), f"vcpu {vcpu_of[tid]}")
            else:
                want[tid] = (plan.emulator, "emulator")
    else:
        for tid in obs.affinities:
            want[tid] = (plan.pool, "floating")
    return want


def moves_for(plan: Plan, obs: Observed) -> list[Move]:
    return [Move(plan.name, tid, obs.affinities[tid], cpus, role)
            for tid, (cpus, role) in sorted(desired(plan, obs).items())
            if obs.affinities[tid] != cpus]


def trim_moves(state: NodeState, plan: Plan, skip: set[str]) -> list[Move]:
    """Take CPUs newly dedicated by ``plan`` away from other instances' non-vCPU
    threads (emulator threads, floating vCPUs), where something else is left."""
    if plan.mode != PINNED:
        return []
    new = plan.dedicated
    moves = []
    for name, obs in sorted(state.observed.items()):
        if name == plan.name or name in skip or state.cpu_masks.get(name, "all") != "all":
            continue
        own = set(obs.vcpu_tids)
        for tid, cpus in sorted(obs.affinities.items()):
            if tid in own or not cpus & new or not cpus - new:
                continue
            moves.append(Move(name, tid, cpus, cpus - new, "trim"))
    return moves


def pin_instance(state: NodeState, name: str, policy: Policy) -> Outcome:
    """Plan one instance against the others as they are (the hook and `apply`)."""
    obs = state.observed[name]
    current = tuple(next(iter(obs.affinities[t])) for t in obs.vcpu_tids
                    if len(obs.affinities[t]) == 1)
    req = Request(name, len(obs.vcpu_tids), current)
    plan = plan_instance(state.topo, state.taken(exclude=name), state.vcpus(exclude=name),
                         req, policy, state.held(exclude=name))
    moves = moves_for(plan, obs) + trim_moves(state, plan, skip=set())
    return Outcome([plan], moves)


def rebalance(state: NodeState, policy: Policy, unknown: set[str]) -> Outcome:
    """Plan every instance from scratch; ``cpu_mask`` ones and ``unknown`` (no vCPU
    thread ids) stay as they are, their dedicated CPUs counted as taken."""
    fixed_names = {n for n in state.observed
                   if n in unknown or state.cpu_masks.get(n, "all") != "all"}
    fixed = {cpu: n for n in sorted(fixed_names) for cpu in state.observed[n].dedicated}
    fixed_vcpus = sum(state.observed[n].vcpus for n in fixed_names)
    requests = [Request(n, len(o.vcpu_tids)) for n, o in sorted(state.observed.items())
                if n not in fixed_names]
    held = frozenset(h for n in fixed_names if (h := state.observed[n].held) is not None)
    plans = plan_node(state.topo, fixed, fixed_vcpus, requests, policy, held)
    moves = [m for p in plans for m in moves_for(p, state.observed[p.name])]
    notes = [f"{n}: left alone ({'cpu_mask ' + state.cpu_masks[n]} set)"
             if state.cpu_masks.get(n, "all") != "all" else f"{n}: left alone (no vCPU ids)"
             for n in sorted(fixed_names)]
    return Outcome(plans, moves, notes=notes)


def apply(outcome: Outcome) -> Outcome:
    debugpoints.point("pinning:start")
    for move in outcome.moves:
        why = set_affinity(move.tid, move.new)
        debugpoints.point("pinning:move")
        if why is None:
            outcome.done.append(move)
        elif why != "gone":
            outcome.notes.append(f"{move.instance} thread {move.tid}: {why}")
    debugpoints.point("pinning:end")
    return outcome

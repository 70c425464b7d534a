"""Observe the node, plan, apply: what the hook and the CLI share.

Callers hold the node-wide lock (``hookpack.locks.node_lock(run_dir, "pinning")``)
around observe + plan + apply: hooks for different instances run concurrently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from hookpack import debugpoints
from hookpack.actions.pinning import memory as pmemory
from hookpack.actions.pinning.affinity import set_affinity
from hookpack.actions.pinning.allocate import (
    PINNED,
    Plan,
    Policy,
    Request,
    plan_instance,
    plan_node,
)
from hookpack.actions.pinning.cpuset import Cpuset, process_cpuset
from hookpack.actions.pinning.threads import (
    Observed,
    Process,
    observe_process,
    running_instances,
    vhost_kthreads,
)
from hookpack.actions.pinning.topology import Topology, format_cpulist, parse_cpulist, read_topology
from hookpack.errors import BadInput
from hookpack.record import field, record


@record(frozen=True)
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


@record
class Outcome:
    plans: list[Plan]
    moves: list[Move]
    done: list[Move] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict[int, tuple[str, int, frozenset[int], str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # read back: narrowed or refused
    memory: list[pmemory.MoveResult] = field(default_factory=list)


@record(frozen=True)
class NodeState:
    topo: Topology
    observed: dict[str, Observed]  # every running instance
    cpu_masks: dict[str, str]  # instance -> cpu_mask ("all" when unknown)
    cpusets: dict[str, Cpuset] = field(default_factory=dict)
    memory: dict[str, dict[int, int]] = field(default_factory=dict)  # resident bytes/node
    mem_free: dict[int, int] | None = None  # free bytes per NUMA node

    def taken(self, exclude: str = "") -> dict[int, str]:
        """CPUs dedicated to instances other than ``exclude``: 1:1 vCPU affinities,
        and every CPU an instance's own ``cpu_mask`` names (any form)."""
        taken = {cpu: name for name, mask in sorted(self.cpu_masks.items())
                 if name != exclude for cpu in mask_cpus(mask)}
        taken.update({cpu: name for name, obs in self.observed.items() if name != exclude
                      for cpu in obs.dedicated})
        return taken

    def request(self, name: str, current: tuple[int, ...] = ()) -> Request:
        obs = self.observed[name]
        cpuset = self.cpusets.get(name, Cpuset(None, None))
        usage = self.memory.get(name, {})
        return Request(name, len(obs.vcpu_tids), current, cpuset=cpuset.cpus,
                       mems=cpuset.mems, memory=sum(usage.values()), own_memory=usage)

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


def mask_cpus(mask: str) -> frozenset[int]:
    """Every CPU a Ganeti ``cpu_mask`` names: ``all``, a cpulist (``0-3,8``) or
    per-vCPU lists (``1:3:5-7``, entries may be ``all``). Unparsable: none."""
    cpus: set[int] = set()
    for part in mask.split(":"):
        part = part.strip()
        if part in ("", "all"):
            continue
        try:
            cpus |= parse_cpulist(part)
        except BadInput:
            return frozenset()
    return frozenset(cpus)


def node_mem_free(sysfs_root: Path) -> dict[int, int] | None:
    """``MemFree`` of every NUMA node (``node<N>/meminfo``), None if unreadable."""
    node_dir = sysfs_root / "devices" / "system" / "node"
    free: dict[int, int] = {}
    try:
        entries = sorted(node_dir.glob("node[0-9]*"))
    except OSError:
        return None
    for entry in entries:
        try:
            text = (entry / "meminfo").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[2] == "MemFree:":
                free[int(entry.name[4:])] = int(parts[3]) * 1024
    return free or None


def observe_node(sysfs_root: Path, kvm_dir: Path, proc_root: Path,
                 vcpu_tids: Mapping[str, list[int]] | None = None,
                 processes: Mapping[str, Process] | None = None) -> NodeState:
    """Topology + every running instance's threads (vCPU tids from QMP where given),
    cgroup cpusets, and resident memory per NUMA node."""
    topo = read_topology(sysfs_root)
    procs = processes if processes is not None else running_instances(kvm_dir, proc_root)
    given = vcpu_tids or {}
    kthreads = vhost_kthreads(proc_root) if procs else {}
    observed = {name: observe_process(proc_root, proc, given.get(name),
                                      kthreads.get(proc.pid))
                for name, proc in procs.items()}
    masks = {name: runtime_cpu_mask(kvm_dir, name) for name in procs}
    cpusets = {name: process_cpuset(proc_root, sysfs_root, proc.pid)
               for name, proc in procs.items()}
    multi = len(topo.nodes) > 1
    memory = {name: pmemory.node_usage(proc_root, proc.pid) if multi else {}
              for name, proc in procs.items() if name in given}
    return NodeState(topo, observed, masks, cpusets, memory,
                     node_mem_free(sysfs_root) if multi else None)


def desired(plan: Plan, obs: Observed) -> dict[int, tuple[frozenset[int], str]]:
    """Every thread's wanted affinity (and its role) under ``plan``."""
    want: dict[int, tuple[frozenset[int], str]] = {}
    if plan.mode == PINNED:
        vcpu_of = {tid: i for i, tid in enumerate(obs.vcpu_tids)}
        for tid in obs.affinities:
            if tid in vcpu_of:
                want[tid] = (frozenset({plan.vcpu_cpus[vcpu_of[tid]]}), f"vcpu {vcpu_of[tid]}")
            else:
                want[tid] = (plan.emulator, "vhost" if tid in obs.vhost else "emulator")
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
    plan = plan_instance(state.topo, state.taken(exclude=name), state.vcpus(exclude=name),
                         state.request(name, current), policy, state.held(exclude=name),
                         state.mem_free)
    moves = moves_for(plan, obs) + trim_moves(state, plan, skip=set())
    outcome = Outcome([plan], moves)
    outcome.checks = checks_for(state, plan, moves)
    return outcome


def rebalance(state: NodeState, policy: Policy, unknown: set[str]) -> Outcome:
    """Plan every instance from scratch; ``cpu_mask`` ones and ``unknown`` (no vCPU
    thread ids) stay as they are, their dedicated CPUs counted as taken."""
    fixed_names = {n for n in state.observed
                   if n in unknown or state.cpu_masks.get(n, "all") != "all"}
    fixed = {cpu: n for n in sorted(fixed_names) for cpu in state.observed[n].dedicated}
    fixed.update({cpu: n for n in sorted(fixed_names)
                  for cpu in mask_cpus(state.cpu_masks.get(n, "all"))})
    fixed_vcpus = sum(state.observed[n].vcpus for n in fixed_names)
    requests = [state.request(n) for n in sorted(state.observed) if n not in fixed_names]
    held = frozenset(h for n in fixed_names if (h := state.observed[n].held) is not None)
    plans = plan_node(state.topo, fixed, fixed_vcpus, requests, policy, held)
    moves = [m for p in plans for m in moves_for(p, state.observed[p.name])]
    notes = [f"{n}: left alone ({'cpu_mask ' + state.cpu_masks[n]} set)"
             if state.cpu_masks.get(n, "all") != "all" else f"{n}: left alone (no vCPU ids)"
             for n in sorted(fixed_names)]
    outcome = Outcome(plans, moves, notes=notes)
    for plan in plans:
        outcome.checks.update(checks_for(state, plan, []))
    for move in moves:
        outcome.checks[move.tid] = (move.instance, state.observed[move.instance].process.pid,
                                    move.new, move.role)
    return outcome


def checks_for(state: NodeState, plan: Plan, moves: list[Move]
               ) -> dict[int, tuple[str, int, frozenset[int], str]]:
    """tid -> (instance, pid, wanted CPUs, role) for the read-back after apply."""
    obs = state.observed[plan.name]
    checks = {tid: (plan.name, obs.process.pid, cpus, role)
              for tid, (cpus, role) in desired(plan, obs).items()}
    for move in moves:
        checks[move.tid] = (move.instance, state.observed[move.instance].process.pid,
                            move.new, move.role)
    return checks


def apply(outcome: Outcome) -> Outcome:
    """Set the moves' affinities, then read every planned thread's affinity back."""
    debugpoints.point("pinning:start")
    refused: dict[int, str] = {}
    for move in outcome.moves:
        why = set_affinity(move.tid, move.new)
        debugpoints.point("pinning:move")
        if why is None:
            outcome.done.append(move)
        elif why != "gone":
            refused[move.tid] = why
    debugpoints.point("pinning:end")
    outcome.failures = read_back(outcome.checks, refused)
    return outcome


def read_back(checks: Mapping[int, tuple[str, int, frozenset[int], str]],
              refused: Mapping[int, str]) -> list[str]:
    """One failure line per thread whose affinity is not what was asked: the kernel
    narrowed it (sched_setaffinity(2) keeps only the CPUs of the thread's cpuset) or
    refused it (EINVAL: none of them allowed). Threads that exited are not failures."""
    failures = []
    for tid, (instance, _pid, want, role) in sorted(checks.items()):
        try:
            have = frozenset(os.sched_getaffinity(tid))
        except ProcessLookupError:
            continue
        except OSError as err:
            failures.append(f"{instance} thread {tid} ({role}): cannot read its affinity: "
                            f"{err.strerror}")
            continue
        if tid in refused:
            failures.append(f"{instance} thread {tid} ({role}): the kernel refused CPU(s) "
                            f"{format_cpulist(want)}: {refused[tid]} (not in its cgroup "
                            f"cpuset?); it stays on {format_cpulist(have)}")
        elif have != want:
            how = "narrowed" if have < want else "changed"
            failures.append(f"{instance} thread {tid} ({role}): asked CPU(s) "
                            f"{format_cpulist(want)}, the kernel {how} it to "
                            f"{format_cpulist(have)} (its cgroup cpuset does not allow the "
                            "rest)")
    return failures


def move_memory(proc_root: Path, sysfs_root: Path, state: NodeState, plan: Plan,
                remaining: Callable[[], float]) -> pmemory.MoveResult | None:
    """Move the instance's memory to the node of its vCPUs (None: nothing to move:
    one NUMA node, or the plan has no node)."""
    if plan.node is None or len(state.topo.nodes) < 2:
        return None
    pid = state.observed[plan.name].process.pid
    return pmemory.move_to_node(proc_root, pid, plan.node, remaining, sysfs_root)

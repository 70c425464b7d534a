"""Property tests of the pinning planner on synthetic hosts (sysfs trees in temp dirs).

Hosts: 1 to 8 NUMA nodes, with and without SMT, some CPUs offline, some reserved.
The hook's sequence is simulated: instances start one after the other, each planned
against what the earlier ones got. No timing here (bench/pinning_plan.py).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookpack.actions.pinning.allocate import (
    FLOATING,
    PINNED,
    Plan,
    Policy,
    Request,
    plan_instance,
    plan_node,
)
from hookpack.actions.pinning.node import observe_node
from hookpack.actions.pinning.topology import Topology, read_topology
from tests.helpers.fakehost import write_qemu, write_sysfs

# Thousands of small files per run: on tmpfs when there is one.
TMP = "/dev/shm" if Path("/dev/shm").is_dir() else None


@st.composite
def hosts(draw):
    nodes = draw(st.integers(1, 8))
    cores = draw(st.integers(1, 6))
    threads = draw(st.sampled_from([1, 2]))
    total = nodes * cores * threads
    offline = draw(st.sets(st.integers(1, total - 1), max_size=total // 3)) if total > 1 else set()
    reserved = draw(st.sets(st.integers(0, total - 1), max_size=max(0, total // 4)))
    policy = Policy(smt=draw(st.sampled_from(["avoid", "allow"])),
                    placement=draw(st.sampled_from(["pack", "spread"])),
                    reserved=frozenset(reserved),
                    emulator_cpus=draw(st.integers(0, 2)),
                    floating=draw(st.sampled_from(["anywhere", "numa_node"])))
    vcpus = draw(st.lists(st.integers(1, 8), max_size=14))
    return (nodes, cores, threads, offline), policy, vcpus


@functools.lru_cache(maxsize=256)
def _topology(nodes: int, cores: int, threads: int, offline: frozenset[int]) -> Topology:
    with tempfile.TemporaryDirectory(dir=TMP) as tmp:
        write_sysfs(Path(tmp), nodes, cores, threads, offline)
        return read_topology(Path(tmp))


def topology_of(shape) -> Topology:
    nodes, cores, threads, offline = shape
    return _topology(nodes, cores, threads, frozenset(offline))


def run_hooks(topo: Topology, policy: Policy, vcpus: list[int]) -> list[Plan]:
    """Instances started one by one, as the hooks would see them."""
    taken: dict[int, str] = {}
    plans = []
    for i, n in enumerate(vcpus):
        name = f"inst{i}"
        plan = plan_instance(topo, taken, sum(vcpus[:i]), Request(name, n), policy)
        plans.append(plan)
        if plan.mode == PINNED:
            taken.update(dict.fromkeys(plan.vcpu_cpus, name))
    return plans


def room_on(topo: Topology, policy: Policy, taken: dict[int, str], node: int) -> int:
    """Independent count: how many vCPUs a node could still take 1:1."""
    usable = [c for c in topo.nodes[node] if c not in policy.reserved]
    free = [c for c in usable if c not in taken]
    if policy.smt == "avoid":
        eligible = [c for c in free if not any(s in taken for s in topo.siblings[c])]
    else:
        eligible = free
    return min(len(eligible), len(free) - policy.emulator_cpus)


def check_plans(topo: Topology, policy: Policy, plans: list[Plan], vcpus: list[int]) -> None:
    usable = topo.online - policy.reserved
    owner: dict[int, str] = {}
    for i, plan in enumerate(plans):
        if plan.mode == PINNED:
            assert len(plan.vcpu_cpus) == vcpus[i]
            for cpu in plan.vcpu_cpus:
                # never two vCPUs (of any instances) on one dedicated CPU
                assert cpu not in owner, (cpu, owner.get(cpu), plan.name)
                owner[cpu] = plan.name
            # one NUMA node, online, never reserved
            assert {topo.node_of(c) for c in plan.vcpu_cpus} == {plan.node}
            assert plan.dedicated <= usable
            assert plan.emulator <= usable
            assert {topo.node_of(c) for c in plan.emulator} == {plan.node}
            assert plan.emulator == plan.dedicated or not plan.emulator & plan.dedicated
        else:
            assert plan.pool and plan.pool <= usable
            assert not plan.vcpu_cpus
    if policy.smt == "avoid":
        for cpu, name in owner.items():
            for sib in topo.siblings[cpu]:
                assert owner.get(sib, name) == name, "two instances share a core"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts())
def test_hook_sequence(case):
    shape, policy, vcpus = case
    topo = topology_of(shape)
    plans = run_hooks(topo, policy, vcpus)
    check_plans(topo, policy, plans, vcpus)
    usable = len(topo.online - policy.reserved)
    taken: dict[int, str] = {}
    for i, plan in enumerate(plans):
        total = sum(vcpus[: i + 1])
        if total > usable:  # overcommit detected
            assert plan.mode == FLOATING and "overcommitted" in plan.reason
        elif plan.mode == FLOATING:
            # did not fit: then truly no node had room (never split across nodes)
            assert "does not fit" in plan.reason
            assert all(room_on(topo, policy, taken, n) < vcpus[i] for n in topo.nodes)
        else:
            taken.update(dict.fromkeys(plan.vcpu_cpus, plan.name))
    # deterministic: same input, same plans (topology read again from a new tree)
    fresh = _topology.__wrapped__(shape[0], shape[1], shape[2], frozenset(shape[3]))
    assert fresh == topo
    assert run_hooks(fresh, policy, vcpus) == plans


@settings(max_examples=100, deadline=None)
@given(hosts())
def test_second_run_keeps_everything(case):
    """A hook run again for a pinned instance keeps its placement (idempotent)."""
    shape, policy, vcpus = case
    topo = topology_of(shape)
    plans = run_hooks(topo, policy, vcpus)
    taken = {c: p.name for p in plans if p.mode == PINNED for c in p.vcpu_cpus}
    total = sum(vcpus)
    for plan in plans:
        if plan.mode != PINNED:
            continue
        again = plan_instance(topo, taken, total - len(plan.vcpu_cpus),
                              Request(plan.name, len(plan.vcpu_cpus), plan.vcpu_cpus), policy)
        if total > len(topo.online - policy.reserved):
            assert again.mode == FLOATING
            continue
        assert again.mode == PINNED and again.kept
        assert again.vcpu_cpus == plan.vcpu_cpus


@settings(max_examples=100, deadline=None)
@given(hosts())
def test_rebalance(case):
    shape, policy, vcpus = case
    topo = topology_of(shape)
    requests = [Request(f"inst{i}", n) for i, n in enumerate(vcpus)]
    plans = plan_node(topo, {}, 0, requests, policy)
    assert [p.name for p in plans] == sorted(r.name for r in requests)
    by_name = {p.name: p for p in plans}
    check_plans(topo, policy, [by_name[r.name] for r in requests], vcpus)
    dedicated = {c for p in plans for c in p.vcpu_cpus}
    for plan in plans:
        if plan.mode == FLOATING and len(dedicated) < len(topo.online - policy.reserved):
            assert not plan.pool & dedicated  # floating ones stay off dedicated CPUs
    if sum(vcpus) > len(topo.online - policy.reserved):
        assert all(p.mode == FLOATING for p in plans)
    assert plan_node(topology_of(shape), {}, 0, list(reversed(requests)), policy) == plans


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts())
def test_allocation_read_back_from_affinities(case):
    """Write the planned affinities into a synthetic /proc (threads unnamed, as on a
    Ganeti node) and read the node's allocation back: the same dedicated CPUs."""
    shape, policy, vcpus = case
    topo = topology_of(shape)
    plans = run_hooks(topo, policy, vcpus)
    with tempfile.TemporaryDirectory(dir=TMP) as tmp:
        root = Path(tmp)
        nodes, cores, threads, offline = shape
        write_sysfs(root / "sys", nodes, cores, threads, offline)
        for i, plan in enumerate(plans):
            pid = 1000 + 100 * i
            aff: dict[int, frozenset[int]] = {pid: plan.emulator or plan.pool,
                                              pid + 1: plan.emulator or plan.pool}
            for v in range(vcpus[i]):
                aff[pid + 2 + v] = (frozenset({plan.vcpu_cpus[v]}) if plan.mode == PINNED
                                    else plan.pool)
            write_qemu(root / "proc", root / "kvm", plan.name, pid, vcpus[i], aff)
        state = observe_node(root / "sys", root / "kvm", root / "proc")
    want = {c: p.name for p in plans if p.mode == PINNED for c in p.vcpu_cpus}
    # A 1-vCPU instance whose threads all sit on one CPU (pinned with its emulator
    # threads on its own CPU, or floating on a one-CPU pool) only "holds" that CPU.
    ambiguous = {p.name: next(iter(p.emulator or p.pool)) for i, p in enumerate(plans)
                 if vcpus[i] == 1 and len(p.emulator or p.pool) == 1
                 and (p.emulator or p.pool) == (p.dedicated or p.pool)}
    assert state.taken() == {c: n for c, n in want.items() if n not in ambiguous}
    assert state.held() == frozenset(ambiguous.values())
    assert state.vcpus() == sum(vcpus)

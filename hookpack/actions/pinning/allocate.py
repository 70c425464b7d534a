"""The planner: where an instance's vCPUs and emulator threads go. Pure, no I/O.

Input: the topology, the CPUs already dedicated to other instances (read back from
live affinities), the instance's request and the policy. Output: a Plan. The same
input always gives the same plan (every choice is ordered by CPU/node ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hookpack.actions.pinning.topology import Topology, format_cpulist
from hookpack.record import field, record, replace

PINNED = "pinned"
FLOATING = "floating"


@record(frozen=True)
class Policy:
    smt: str = "avoid"  # "avoid": no core shared between instances; "allow"
    placement: str = "pack"  # "pack": fullest node that fits; "spread": emptiest
    reserved: frozenset[int] = frozenset()  # host CPUs no instance thread may use
    emulator_cpus: int = 1  # non-dedicated CPUs to keep on the node for emulator/I/O
    floating: str = "anywhere"  # or "numa_node": confine a floating instance to one node
    # Like Nova's cpu_dedicated_set / cpu_shared_set. None: every online CPU that is not
    # isolated (isolcpus=). Isolated CPUs are never shared; they take vCPUs only when
    # listed in dedicated_set.
    dedicated_set: frozenset[int] | None = None  # CPUs vCPUs may be pinned to 1:1
    shared_set: frozenset[int] | None = None  # CPUs for emulator threads and floating ones


@record(frozen=True)
class Request:
    name: str
    vcpus: int
    current: tuple[int, ...] = ()  # its vCPUs' single-CPU affinities now, by vCPU index
    cpuset: frozenset[int] | None = None  # its QEMU's cgroup cpuset (None: no limit)
    mems: frozenset[int] | None = None  # NUMA nodes its cpuset allows memory on
    memory: int = 0  # resident bytes of its QEMU
    own_memory: Mapping[int, int] = field(default_factory=dict)  # of that, per node


@record(frozen=True)
class Plan:
    name: str
    mode: str  # PINNED or FLOATING
    vcpu_cpus: tuple[int, ...] = ()  # PINNED: the one CPU of each vCPU, by index
    emulator: frozenset[int] = frozenset()  # PINNED: emulator and I/O threads' CPUs
    pool: frozenset[int] = frozenset()  # FLOATING: every thread's CPUs
    node: int | None = None
    reason: str = ""
    kept: bool = False  # PINNED: the current placement was valid and kept

    @property
    def dedicated(self) -> frozenset[int]:
        return frozenset(self.vcpu_cpus)

    def summary(self) -> str:
        if self.mode == PINNED:
            return (f"{len(self.vcpu_cpus)} vCPU(s) 1:1 on NUMA node {self.node} CPU(s) "
                    f"{','.join(map(str, self.vcpu_cpus))}, emulator threads on "
                    f"{format_cpulist(self.emulator)}")
        where = "" if self.node is None else f" (NUMA node {self.node})"
        return f"floating on CPU(s) {format_cpulist(self.pool)}{where}: {self.reason}"


@record
class _Node:
    id: int
    usable: tuple[int, ...]  # online, not reserved, dedicated or shared
    free: list[int] = field(default_factory=list)  # usable and not dedicated to others


def vcpu_cpus(topo: Topology, policy: Policy,
              cpuset: frozenset[int] | None = None) -> frozenset[int]:
    """CPUs a vCPU may be pinned to 1:1."""
    base = policy.dedicated_set if policy.dedicated_set is not None else (
        topo.online - topo.isolated)
    cpus = (base & topo.online) - policy.reserved
    return cpus if cpuset is None else cpus & cpuset


def shared_cpus(topo: Topology, policy: Policy,
                cpuset: frozenset[int] | None = None) -> frozenset[int]:
    """CPUs for emulator threads and floating instances (never isolated ones)."""
    base = policy.shared_set if policy.shared_set is not None else topo.online
    cpus = (base & topo.online) - policy.reserved - topo.isolated
    return cpus if cpuset is None else cpus & cpuset


def usable_cpus(topo: Topology, policy: Policy) -> frozenset[int]:
    """CPUs the vCPUs of the node's instances are counted against (overcommit)."""
    return vcpu_cpus(topo, policy)


def plan_instance(topo: Topology, taken: Mapping[int, str], other_vcpus: int,
                  req: Request, policy: Policy, held: frozenset[int] = frozenset(),
                  mem_free: Mapping[int, int] | None = None) -> Plan:
    """Plan one instance while the others stay where they are.

    ``mem_free``: free bytes per NUMA node (None: memory is not looked at). A node
    holds the instance when its free memory plus the instance's own pages already
    there cover the instance's resident memory.

    ``taken``: CPU -> instance it is dedicated to (never ``req.name``'s own CPUs).
    ``other_vcpus``: vCPUs of every other instance running on the node, pinned or not.
    ``held``: CPUs a whole other QEMU sits on (see threads.observe_process): never
    given to a vCPU, but still fine for emulator threads and floating ones.
    """
    usable = usable_cpus(topo, policy)
    taken = {cpu: name for cpu, name in taken.items() if name != req.name}
    total = other_vcpus + req.vcpus
    if req.vcpus < 1:
        return _floating(topo, taken, req, policy, "no vCPU thread found")
    if total > len(usable):
        return _floating(topo, taken, req, policy,
                         f"node overcommitted: {total} vCPUs on {len(usable)} usable CPUs")
    kept = _keep_current(topo, taken, req, policy, mem_free)
    if kept is not None:
        return kept
    nodes = _nodes(topo, taken, policy)
    fits: list[tuple[int, int, list[int], frozenset[int]]] = []
    best_room = 0
    short_of_memory: list[int] = []
    for node in nodes:
        if req.mems is not None and node.id not in req.mems:
            continue
        choice, room = _choose(topo, node, taken, req, policy, held)
        best_room = max(best_room, room)
        if choice is None:
            continue
        if not _memory_fits(req, node.id, mem_free):
            short_of_memory.append(node.id)
            continue
        emulator = _shared_free(topo, node, policy, req) - frozenset(choice)
        fits.append((len(node.free), node.id, choice, emulator))
    if not fits:
        memory = ""
        if short_of_memory:
            memory = (f"; node(s) {','.join(map(str, short_of_memory))} have the CPUs but not "
                      f"{req.memory >> 20} MiB of free memory")
        return _floating(topo, taken, req, policy, (
            f"does not fit: needs {req.vcpus} dedicated CPU(s) + {policy.emulator_cpus} for "
            f"emulator threads on one NUMA node, the best node has room for {best_room}"
            f"{memory}"))
    if policy.placement == "spread":
        fits.sort(key=lambda f: (-f[0], f[1]))
    else:
        fits.sort(key=lambda f: (f[0], f[1]))
    _, node_id, choice, emulator = fits[0]
    return Plan(req.name, PINNED, vcpu_cpus=tuple(choice),
                emulator=emulator or frozenset(choice), node=node_id)


def plan_node(topo: Topology, fixed: Mapping[int, str], fixed_vcpus: int,
              requests: Sequence[Request], policy: Policy,
              held: frozenset[int] = frozenset()) -> list[Plan]:
    """Plan every instance of the node from scratch (rebalance).

    ``fixed``: CPUs dedicated to instances hookpack leaves alone (own ``cpu_mask``);
    ``fixed_vcpus``: their vCPU count. Largest instances first, then by name.
    """
    usable = usable_cpus(topo, policy)
    order = sorted(requests, key=lambda r: (-r.vcpus, r.name))
    total = fixed_vcpus + sum(r.vcpus for r in order)
    taken = dict(fixed)
    pinned: list[Plan] = []
    floating: list[tuple[Request, str]] = []
    if total > len(usable):
        why = f"node overcommitted: {total} vCPUs on {len(usable)} usable CPUs"
        floating = [(r, why) for r in order]
    else:
        for req in order:
            fresh = replace(req, current=())
            plan = plan_instance(topo, taken, 0, fresh, policy, held)
            if plan.mode == PINNED:
                pinned.append(plan)
                taken.update(dict.fromkeys(plan.vcpu_cpus, req.name))
            else:
                floating.append((req, plan.reason))
    plans = pinned + [_floating(topo, taken, r, policy, why) for r, why in floating]
    return sorted(plans, key=lambda p: p.name)


def _memory_fits(req: Request, node: int, mem_free: Mapping[int, int] | None) -> bool:
    if mem_free is None or not req.memory or node not in mem_free:
        return True
    return mem_free[node] + req.own_memory.get(node, 0) >= req.memory


def _nodes(topo: Topology, taken: Mapping[int, str], policy: Policy) -> list[_Node]:
    any_use = vcpu_cpus(topo, policy) | shared_cpus(topo, policy)
    nodes = []
    for node_id, cpus in topo.nodes.items():
        usable = tuple(c for c in cpus if c in any_use)
        nodes.append(_Node(node_id, usable, [c for c in usable if c not in taken]))
    return nodes


def _shared_free(topo: Topology, node: _Node, policy: Policy, req: Request) -> frozenset[int]:
    """The node's free CPUs the instance's emulator threads may use."""
    return frozenset(node.free) & shared_cpus(topo, policy, req.cpuset)


def _eligible(topo: Topology, node: _Node, taken: Mapping[int, str], owner: str,
              policy: Policy, cpuset: frozenset[int] | None = None) -> list[int]:
    """Free CPUs of the node this instance may own, in the order to take them."""
    allowed = vcpu_cpus(topo, policy, cpuset)
    free = [c for c in node.free if c in allowed]
    if policy.smt == "avoid":
        return [c for c in free
                if all(taken.get(s, owner) == owner for s in topo.siblings[c])]
    # "allow": fill the holes in partly used cores first, keep whole cores free.
    def key(cpu: int) -> tuple[int, int, int]:
        busy = any(s in taken for s in topo.siblings[cpu])
        return (0 if busy else 1, -topo.core_of(cpu), cpu)
    return sorted(free, key=key)


def _choose(topo: Topology, node: _Node, taken: Mapping[int, str], req: Request,
            policy: Policy, held: frozenset[int]) -> tuple[list[int] | None, int]:
    """The CPUs for the vCPUs on this node (None if it does not fit), and the room."""
    eligible = [c for c in _eligible(topo, node, taken, "", policy, req.cpuset)
                if c not in held]
    shared = _shared_free(topo, node, policy, req)
    if policy.smt == "avoid":
        # Whole cores, the instance's vCPUs on sibling threads of the same cores.
        eligible = sorted(eligible, key=lambda c: (-topo.core_of(c), c))
    # CPUs no emulator thread may use (dedicated-only, isolated) are taken first.
    eligible = sorted(eligible, key=lambda c: c in shared)
    # Room: how many vCPUs could go here while keeping emulator_cpus non-dedicated.
    room = 0
    while (room < len(eligible)
           and len(shared - frozenset(eligible[:room + 1])) >= policy.emulator_cpus):
        room += 1
    if req.vcpus > room:
        return None, room
    # Dedicated CPUs come from the top of the node: the low CPUs (CPU 0 takes most
    # housekeeping and interrupts) stay for the host and emulator threads.
    return sorted(eligible[:req.vcpus]), room


def _keep_current(topo: Topology, taken: Mapping[int, str], req: Request,
                  policy: Policy, mem_free: Mapping[int, int] | None) -> Plan | None:
    """The instance's current 1:1 placement, if it is still valid under the policy."""
    current = req.current
    if len(current) != req.vcpus or len(set(current)) != len(current):
        return None
    allowed = vcpu_cpus(topo, policy, req.cpuset)
    if any(c not in allowed or c in taken or c not in topo.siblings for c in current):
        return None
    node_ids = {topo.node_of(c) for c in current}
    if len(node_ids) != 1:
        return None
    node_id = node_ids.pop()
    if req.mems is not None and node_id not in req.mems:
        return None
    if not _memory_fits(req, node_id, mem_free):
        return None
    if policy.smt == "avoid" and any(
            s in taken for c in current for s in topo.siblings[c]):
        return None
    node = next(n for n in _nodes(topo, taken, policy) if n.id == node_id)
    emulator = _shared_free(topo, node, policy, req) - frozenset(current)
    if len(emulator) < policy.emulator_cpus:
        return None
    return Plan(req.name, PINNED, vcpu_cpus=current, emulator=emulator or frozenset(current),
                node=node_id, kept=True)


def _floating(topo: Topology, taken: Mapping[int, str], req: Request, policy: Policy,
              reason: str) -> Plan:
    """Every thread on the shared CPUs not dedicated to others (all shared if none)."""
    usable = shared_cpus(topo, policy, req.cpuset)
    if not usable:  # a cpuset of isolated or dedicated-only CPUs: stay inside it
        usable = vcpu_cpus(topo, policy, req.cpuset) or topo.online
    pool = _pool(usable, taken)
    node_id = None
    if policy.floating == "numa_node":
        candidates = []
        for nid, cpus in topo.nodes.items():
            if req.mems is not None and nid not in req.mems:
                continue
            free = frozenset(c for c in cpus if c in usable and c not in taken)
            if free:
                candidates.append((-len(free), nid, free))
        if candidates:
            _, node_id, pool = min(candidates, key=lambda c: (c[0], c[1]))
    return Plan(req.name, FLOATING, pool=pool, node=node_id, reason=reason)


def _pool(cpus: Iterable[int], taken: Mapping[int, str]) -> frozenset[int]:
    cpus = frozenset(cpus)
    free = frozenset(c for c in cpus if c not in taken)
    return free or cpus

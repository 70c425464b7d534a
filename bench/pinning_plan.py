"""Benchmark: the pinning planner on a big host.

Host: 4 NUMA nodes x 32 cores x 2 threads (256 CPUs, read from a synthetic sysfs
tree), 2 reserved CPUs per node; 200 instances of 1 or 2 vCPUs (240 vCPUs, not
overcommitted). For both SMT policies (with `avoid` a 1-vCPU instance holds a whole
core, so the last instances no longer fit and float), printed as medians:
  - one instance planned against the 199 placed ones (what a hook does),
  - the whole node re-planned from scratch (rebalance, 200 instances),
each with its ratio to a trivial baseline measured in the same run: copying the
planner's input (the taken-CPU map and the request list).
Target (issue #7): plan <= 20 ms.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results  # noqa: E402
from hookpack.actions.pinning.allocate import (  # noqa: E402
    PINNED,
    Policy,
    Request,
    plan_instance,
    plan_node,
)
from hookpack.actions.pinning.topology import read_topology  # noqa: E402
from tests.helpers.fakehost import write_sysfs  # noqa: E402

RUNS = 41  # every case, the baseline included: ratios of like to like


def median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    results = Results("pinning_plan", runs=RUNS, nodes=4, cores_per_node=32, threads=2,
                      instances=200)
    with tempfile.TemporaryDirectory() as tmp:
        write_sysfs(Path(tmp), nodes=4, cores_per_node=32, threads=2)
        topo = read_topology(Path(tmp))
    reserved = frozenset(c for cpus in topo.nodes.values() for c in cpus[:2])
    sizes, total = [], 0
    for i in range(200):
        n = 2 if i % 4 == 3 and total + 2 + (199 - i) <= 240 else 1
        sizes.append(n)
        total += n
    requests = [Request(f"inst{i:03d}.example.test", n) for i, n in enumerate(sizes)]
    for smt in ("allow", "avoid"):
        policy = Policy(reserved=reserved, smt=smt)
        taken: dict[int, str] = {}
        for req in requests[:-1]:
            plan = plan_instance(topo, taken, 0, req, policy)
            if plan.mode == PINNED:
                taken.update(dict.fromkeys(plan.vcpu_cpus, req.name))
        last = requests[-1]
        others = total - last.vcpus
        one = plan_instance(topo, taken, others, last, policy)
        print(f"smt={smt}: host {topo.describe()}, {len(reserved)} reserved, "
              f"{len(requests)} instances, {total} vCPUs, {len(taken)} CPUs dedicated "
              f"before the last one; the last one: {one.mode}")
        baseline = median_ms(lambda t=taken: (dict(t), list(requests)))
        hook_ms = median_ms(lambda t=taken, p=policy, o=others, r=last:
                            plan_instance(topo, t, o, r, p))
        node_ms = median_ms(lambda p=policy: plan_node(topo, {}, 0, requests, p))
        print(f"  baseline  copy the input:        {baseline:8.3f} ms")
        print(f"  plan one instance (hook):        {hook_ms:8.3f} ms  ratio "
              f"{hook_ms / baseline:7.1f}x  ({'OK' if hook_ms <= 20 else 'OVER'} target 20 ms)")
        print(f"  plan 200 instances (rebalance):  {node_ms:8.3f} ms  ratio "
              f"{node_ms / baseline:7.1f}x")
        for key, value in (("baseline_ms", baseline), ("one_ms", hook_ms),
                           ("one_ratio", hook_ms / baseline), ("rebalance_ms", node_ms),
                           ("rebalance_ratio", node_ms / baseline)):
            results.add(f"smt_{smt}_{key}", value)
    results.save()

if __name__ == "__main__":
    main()

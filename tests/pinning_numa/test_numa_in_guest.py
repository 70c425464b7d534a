"""Boot the stock-kernel guest with 4 NUMA nodes and run ``inner/`` there.

One boot, every check inside it (real QEMU processes in the guest:
threads, affinities, memory placement, cgroup cpusets, vhost-net). All inner tests must
pass; none may be skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.guestpytest import GUEST_PYTEST

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "inner"
MODULES = ("tun", "vhost_net")

# One topology (CI time): 4 nodes with an isolated CPU. Every inner test runs there; none
# depends on there being exactly two nodes (a 2-node guest ran the placement and memory
# tests until 2026-12; bench/numa_move.py still boots one).


def run_inner(run_in_host_guest, nodes: int, vcpus: int, kernel_args: str = ""):
    argv = [*GUEST_PYTEST, str(INNER), "-q", "-rA", "-s", "--tb=short"]
    run = run_in_host_guest(argv, cwd=REPO, timeout=1200, modules=MODULES, vcpus=vcpus,
                            memory_mib=2048, numa_nodes=nodes, kernel_args=kernel_args,
                            env={"HPG_GUEST": "1", "NUMA_NODES": str(nodes),
                                 "PYTHONUNBUFFERED": "1"})
    print(f"guest ({nodes} NUMA nodes, {vcpus} vCPUs): boot-to-command "
          f"{run.boot_to_command:.1f}s, whole run {run.total:.1f}s")
    print(run.output[-8000:])
    summary = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
    return run, counts


def test_four_numa_nodes_one_cpu_isolated(run_in_host_guest):
    run, counts = run_inner(run_in_host_guest, nodes=4, vcpus=8, kernel_args="isolcpus=7")
    assert run.rc == 0, run.output[-5000:]
    assert counts.get("passed") == 10 and set(counts) == {"passed"}, counts

"""Benchmark: moving an instance's memory to another NUMA node, time per GiB.

A QEMU (``-S -m 512M -mem-prealloc``, TCG, no guest OS) is started with its threads
on node 1, so its RAM is there; then its memory is moved between node 1 and node 0,
back and forth, alternately by
  - baseline: ``migratepages <pid> <from> <to>`` (numactl's tool, C, migrate_pages(2)),
  - hookpack: ``python3 -c "...move_to_node(...)"`` (what the pinning action runs:
    numa_maps read before and after, migrate_pages(2) in a forked child),
each as a whole process (start to exit), the same number of runs, medians; printed
as seconds per GiB actually moved (numa_maps before/after, outside the timing) and
the ratio hookpack / baseline.

This host has one NUMA node: the script boots the stock-kernel test guest
(vmtestbed.hostguest) with 2 NUMA nodes and runs itself there (``--inner``). The guest
is TCG-emulated: absolute figures are those of an emulated machine on a shared host;
the ratio is the like-for-like figure.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results import Results, result_line, run_inner_in_guest  # noqa: E402
from hookpack.actions.pinning.memory import node_usage  # noqa: E402

RUNS = 7
MIB = 512
GIB = 1 << 30


def usage(pid: int) -> dict[int, int]:
    return node_usage(Path("/proc"), pid)


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def inner() -> None:
    nodes = sorted(int(p.name[4:]) for p in Path("/sys/devices/system/node").glob("node[0-9]*"))
    assert len(nodes) >= 2, f"needs 2 NUMA nodes, has {nodes}"
    qemu = subprocess.Popen(
        ["numactl", "--cpunodebind=1", "--", "qemu-system-x86_64", "-S", "-display", "none",
         "-nodefaults", "-no-user-config", "-machine", "pc", "-accel", "tcg",
         "-m", f"{MIB}M", "-mem-prealloc", "-qmp", "unix:/tmp/bench.qmp,server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not Path("/tmp/bench.qmp").exists() or usage(qemu.pid).get(1, 0) < MIB << 20:
            assert qemu.poll() is None, "qemu exited"
            time.sleep(0.2)
        time.sleep(1)
        ours = ("import sys; from pathlib import Path; "
                "from hookpack.actions.pinning.memory import move_to_node; "
                "r = move_to_node(Path('/proc'), int(sys.argv[1]), int(sys.argv[2])); "
                "print(r.seconds); sys.exit(1 if r.error or r.background else 0)")
        results: dict[str, list[float]] = {"baseline": [], "hookpack": [], "syscall": []}
        src, dst = 1, 0
        for i in range(2 * RUNS):
            kind = "hookpack" if i % 2 == 0 else "baseline"
            before = usage(qemu.pid)
            if kind == "baseline":
                took, _ = timed(["migratepages", str(qemu.pid), str(src), str(dst)])
            else:
                took, out = timed([sys.executable, "-c", ours, str(qemu.pid), str(dst)])
            after = usage(qemu.pid)
            moved = after.get(dst, 0) - before.get(dst, 0)
            assert moved > (MIB << 20) * 0.9, (kind, before, after)
            results[kind].append(took / (moved / GIB))
            if kind == "hookpack":
                results["syscall"].append(float(out.strip()) / (moved / GIB))
            src, dst = dst, src
        base = statistics.median(results["baseline"])
        mine = statistics.median(results["hookpack"])
        print(f"numa_move: QEMU with {MIB} MiB preallocated RAM, moved between NUMA nodes 1 "
              f"and 0, {RUNS} runs each, whole process, median")
        print(f"  baseline migratepages (numactl): {base:.3f} s/GiB "
              f"(runs: {', '.join(f'{x:.3f}' for x in results['baseline'])})")
        print(f"  hookpack move_to_node:           {mine:.3f} s/GiB "
              f"(runs: {', '.join(f'{x:.3f}' for x in results['hookpack'])})")
        print(f"  ratio hookpack / baseline: {mine / base:.2f}")
        inside = statistics.median(results["syscall"])
        print(f"  (of that, helper process + migrate_pages + wait: {inside:.3f} s/GiB; the "
              "rest is the outer Python start and the numa_maps reads)")
        print(result_line({"baseline_s_per_gib": base, "hookpack_s_per_gib": mine,
                           "ratio": mine / base, "helper_s_per_gib": inside}))
    finally:
        qemu.kill()
        qemu.wait()


def main() -> None:
    if "--inner" in sys.argv:
        inner()
        return
    rc, figures = run_inner_in_guest(Path(__file__), "TCG, 2 NUMA nodes x 1 vCPU x 1024 MiB",
                                     vcpus=2, memory_mib=2048, numa_nodes=2)
    if rc == 0 and figures:
        results = Results("numa_move", runs=RUNS, mib=MIB, statistic="median",
                          where="hostguest, TCG, 2 NUMA nodes")
        for key, value in figures.items():
            results.add(key, value)
        results.save()
    sys.exit(rc)


if __name__ == "__main__":
    main()

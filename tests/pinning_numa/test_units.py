"""The NUMA parts of pinning on synthetic trees and this host (fast, no QEMU):
cpu_mask reservations, cpusets, isolated/dedicated/shared CPUs, memory-aware node
choice, numa_maps parsing, vhost kernel threads, unmovable threads, the read-back.

Moving memory and the kernel narrowing masks need a multi-node kernel: inner/.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hookpack.actions.pinning import memory as pmemory
from hookpack.actions.pinning.allocate import FLOATING, PINNED, Policy, Request, plan_instance
from hookpack.actions.pinning.cpuset import process_cpuset
from hookpack.actions.pinning.node import mask_cpus, observe_node, read_back
from hookpack.actions.pinning.threads import observe_process, read_process, vhost_kthreads
from hookpack.actions.pinning.topology import read_topology
from tests.helpers.fakehost import write_qemu, write_sysfs


@pytest.fixture
def host(tmp_path):
    write_sysfs(tmp_path / "sys", nodes=2, cores_per_node=4, threads=1)  # 0-3 | 4-7
    return tmp_path


@pytest.mark.parametrize(("mask", "cpus"), [
    ("all", set()), ("5", {5}), ("0-2,6", {0, 1, 2, 6}), ("1:3:5-7", {1, 3, 5, 6, 7}),
    ("1:all:2", {1, 2}), ("bogus", set())])
def test_mask_cpus_every_form(mask, cpus):
    assert mask_cpus(mask) == cpus


def test_other_instances_cpu_mask_in_any_form_reserves_its_cpus(host):
    kvm, proc = host / "kvm", host / "proc"
    write_qemu(proc, kvm, "masked.example.test", 100, 3, {100: {0, 1}, 101: {0, 1}},
               cpu_mask="1:3:5-7")
    write_qemu(proc, kvm, "new.example.test", 200, 1, {200: set(range(8)), 201: set(range(8))})
    state = observe_node(host / "sys", kvm, proc, {"new.example.test": [201]})
    taken = state.taken(exclude="new.example.test")
    assert set(taken) >= {1, 3, 5, 6, 7}
    plan = plan_instance(state.topo, taken, state.vcpus(exclude="new.example.test"),
                         state.request("new.example.test"), Policy())
    assert plan.mode == PINNED
    assert not set(plan.vcpu_cpus) & {1, 3, 5, 6, 7}
    assert not plan.emulator & {1, 3, 5, 6, 7}


def test_cpuset_limits_vcpus_emulators_and_node(host):
    topo = read_topology(host / "sys")
    plan = plan_instance(topo, {}, 0, Request("a", 2, cpuset=frozenset({5, 6, 7}),
                                              mems=frozenset({1})), Policy())
    assert plan.mode == PINNED and plan.node == 1
    assert set(plan.vcpu_cpus) | plan.emulator <= {5, 6, 7}
    # memory only allowed on node 0, CPUs only on node 1: no node, floats in its cpuset
    plan = plan_instance(topo, {}, 0, Request("a", 1, cpuset=frozenset({6, 7}),
                                              mems=frozenset({0})), Policy())
    assert plan.mode == FLOATING and plan.pool == {6, 7}


def test_isolated_cpus_only_for_listed_dedicated_vcpus(tmp_path):
    write_sysfs(tmp_path, nodes=1, cores_per_node=4, threads=1)
    (tmp_path / "devices/system/cpu/isolated").write_text("2-3\n")
    topo = read_topology(tmp_path)
    assert topo.isolated == {2, 3}
    default = plan_instance(topo, {}, 0, Request("a", 1), Policy())
    assert default.vcpu_cpus == (1,) and default.emulator == {0}
    floating = plan_instance(topo, {}, 0, Request("a", 3), Policy())  # 3 > 2 usable
    assert floating.mode == FLOATING and floating.pool == {0, 1}
    nova = Policy(dedicated_set=frozenset({2, 3}), shared_set=frozenset({0, 1}))
    plan = plan_instance(topo, {}, 0, Request("a", 2), nova)
    assert plan.vcpu_cpus == (2, 3) and plan.emulator == {0, 1}
    # a shared_set naming an isolated CPU still never puts emulator threads there
    odd = Policy(dedicated_set=frozenset({3}), shared_set=frozenset({0, 2}))
    plan = plan_instance(topo, {}, 0, Request("a", 1), odd)
    assert plan.vcpu_cpus == (3,) and plan.emulator == {0}


def test_node_without_free_memory_for_the_instance_is_passed_over(host):
    topo = read_topology(host / "sys")
    req = Request("a", 1, memory=600 << 20, own_memory={1: 100 << 20})
    free = {0: 500 << 20, 1: 550 << 20}
    plan = plan_instance(topo, {}, 0, req, Policy(), mem_free=free)
    assert plan.node == 1  # node 1: 550 free + 100 of its own >= 600
    plan = plan_instance(topo, {}, 0, Request("a", 1, memory=900 << 20), Policy(),
                         mem_free=free)
    assert plan.mode == FLOATING and "not 900 MiB of free memory" in plan.reason


NUMA_MAPS = """\
55d0c0000000 default file=/usr/bin/qemu-system-x86_64 mapped=10 N0=6 N1=4 kernelpagesize_kB=4
7f0000000000 default anon=65536 dirty=65536 N0=1000 N1=64536 kernelpagesize_kB=4
7f4000000000 default file=/dev/hugepages/ram huge dirty=8 N1=8 kernelpagesize_kB=2048
7ffd00000000 default stack anon=3 dirty=3 N0=3 kernelpagesize_kB=4
7ffe00000000 default
"""
MAPS = """\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1 /usr/bin/qemu-system-x86_64
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
7f4000000000-7f4001000000 rw-s 00000000 00:10 2 /dev/hugepages/ram
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffe00000000-7ffe00001000 r--p 00000000 00:00 0 [vvar]
"""


def test_numa_maps_per_node_and_why_hugepages_stay(tmp_path):
    (tmp_path / "proc/42").mkdir(parents=True)
    (tmp_path / "proc/42/numa_maps").write_text(NUMA_MAPS)
    (tmp_path / "proc/42/maps").write_text(MAPS)
    maps = pmemory.read_maps(tmp_path / "proc", 42)
    assert [m.end - m.start for m in maps] == [0x100000, 0x10000000, 0x1000000, 0x21000]
    # the instance's own memory: anonymous and shared mappings; the QEMU binary apart
    usage = pmemory.per_node(maps)
    assert usage == {0: (1000 + 3) * 4096, 1: 64536 * 4096 + 8 * (2 << 20)}
    assert pmemory.per_node(maps, images=True) == {0: 6 * 4096, 1: 4 * 4096}
    assert [m.huge for m in maps] == [False, False, True, False]
    assert [m.image for m in maps] == [True, False, False, False]
    free = tmp_path / "sys/devices/system/node/node0/hugepages/hugepages-2048kB"
    free.mkdir(parents=True)
    (free / "free_hugepages").write_text("0\n")
    why = pmemory.why_left(tmp_path / "proc", tmp_path / "sys", 42, 0)
    assert "16 MiB of 2048 kB hugetlbfs pages, 0 free 2048 kB pages on node 0" in why


def test_vhost_kernel_threads_and_unmovable_threads(host):
    kvm, proc = host / "kvm", host / "proc"
    write_qemu(proc, kvm, "v.example.test", 300, 1, {300: {0, 1}, 301: {0, 1}, 302: {0, 1}})
    # kernel thread vhost-300 (Linux < 6.4): its own /proc entry, not a task of 300
    kt = proc / "77"
    (kt / "task" / "77").mkdir(parents=True)
    (kt / "comm").write_text("vhost-300\n")
    (kt / "task" / "77" / "status").write_text("Cpus_allowed_list:\t0-7\n")
    # thread 302 carries PF_NO_SETAFFINITY (like kvm-nx-lpage-recovery)
    flags = 0x04000000 | 0x40
    (proc / "300/task/302/stat").write_text(f"302 (kvm-nx-lpage) S 1 1 1 0 -1 {flags} 0 0\n")
    assert vhost_kthreads(proc) == {300: [77]}  # every process looked at
    (proc / "2/task/2").mkdir(parents=True)
    (proc / "2/task/2/children").write_text("77 78 ")  # kthreadd's children only
    assert vhost_kthreads(proc) == {300: [77]}
    process = read_process(proc, "v.example.test", 300)
    obs = observe_process(proc, process, [301], [77])
    assert obs.kthreads == (77,) and obs.vhost == (77,) and obs.unmovable == (302,)
    assert 77 in obs.affinities and 302 not in obs.affinities


def test_cpuset_from_cgroup_v1_and_v2_files(tmp_path):
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "9").mkdir(parents=True)
    (proc / "9/status").write_text("Name:\tqemu\nMems_allowed_list:\t1\n")
    (proc / "9/mountinfo").write_text(
        "30 20 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "31 20 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n")
    (proc / "9/cgroup").write_text("0::/machine/vm1\n")
    v2 = sys / "fs/cgroup/machine"
    (v2 / "vm1").mkdir(parents=True)
    (v2 / "cpuset.cpus.effective").write_text("4-7\n")  # controller on at the parent
    got = process_cpuset(proc, sys, 9)
    assert got.cpus == {4, 5, 6, 7} and got.mems == {1} and got.where.endswith(
        "machine/cpuset.cpus.effective")
    (proc / "9/cgroup").write_text("5:cpuset:/ganeti\n0::/\n")
    (sys / "fs/cgroup/cpuset/ganeti").mkdir(parents=True)
    (sys / "fs/cgroup/cpuset/ganeti/cpuset.effective_cpus").write_text("2-3\n")
    assert process_cpuset(proc, sys, 9).cpus == {2, 3}
    (proc / "9/mountinfo").write_text("")
    assert process_cpuset(proc, sys, 9).cpus is None  # nothing known: no limit


def test_read_back_names_the_thread_and_why():
    """A real thread of this process: asked one set, the kernel has another."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=body)
    t.start()
    ready.wait(10)
    try:
        have = frozenset(os.sched_getaffinity(tid[0]))
        want = have | {max(have) + 1000}
        ok = read_back({tid[0]: ("i.example.test", os.getpid(), have, "emulator")}, {})
        assert ok == []
        lines = read_back({tid[0]: ("i.example.test", os.getpid(), want, "vcpu 0")}, {})
        assert len(lines) == 1 and f"thread {tid[0]} (vcpu 0): asked CPU(s)" in lines[0]
        assert "the kernel narrowed it to" in lines[0]
        lines = read_back({tid[0]: ("i.example.test", os.getpid(), want, "vcpu 0")},
                          {tid[0]: "refused (EINVAL)"})
        assert "the kernel refused" in lines[0] and "EINVAL" in lines[0]
    finally:
        done.set()
        t.join()


def test_migrate_pages_syscall_on_this_host():
    """The real syscall: a no-op move on this one-node host, ESRCH for no process."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pmemory.migrate_pages(child.pid, [0], 0) == 0
        moved = pmemory.move_to_node(Path("/proc"), child.pid, 0)
        assert moved.background is None and moved.error is None and moved.moved == 0
        assert set(moved.after) == {0} and moved.share == 1.0
    finally:
        child.kill()
        child.wait()
    with pytest.raises(OSError) as err:
        pmemory.migrate_pages(child.pid, [0], 0)
    assert err.value.errno == errno.ESRCH


def _fake_proc(root: Path, pid: int, nodes: dict[int, int]) -> None:
    """/proc/<pid>/maps and numa_maps of one anonymous mapping with ``nodes`` (node ->
    4 KiB pages)."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "maps").write_text("7f0000000000-7f0010000000 rw-p 00000000 00:00 0\n")
    counts = " ".join(f"N{n}={c}" for n, c in sorted(nodes.items()))
    (d / "numa_maps").write_text(f"7f0000000000 default anon=1 {counts} kernelpagesize_kB=4\n")


@pytest.mark.parametrize("kernel_moves, passes, share", [
    # the guest allocated on node 1 during the first pass: a second pass moves that too
    ([{0: 1000, 1: 300}, {0: 1300}], 2, 1.0),
    # pages the kernel cannot move (the same bytes left after a pass): no futile pass
    ([{0: 900, 1: 100}, {0: 900, 1: 100}], 2, 0.9),
    # a guest that keeps allocating elsewhere: at most MOVE_PASSES passes, then reported
    ([{0: 900, 1: 200}, {0: 1000, 1: 250}, {0: 1100, 1: 300}, {0: 1400}], 3, 1100 / 1400),
])
def test_memory_move_passes_again_for_what_arrived_during_a_pass(tmp_path, monkeypatch,
                                                                 kernel_moves, passes, share):
    """The pass loop of move_to_node. A real helper process makes the real (no-op, this
    host has one node) migrate_pages call on a real process; what the kernel would show
    after each pass is a /proc of the test's own (no second NUMA node here: the inner
    guest's tests move real memory between four)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    proc = tmp_path / "proc"
    _fake_proc(proc, child.pid, {1: 1000})
    after_pass = iter(kernel_moves)
    started = []
    real_start = pmemory._start_move

    def start_and_show(pid, node, off):
        started.append(off)
        helper = real_start(pid, 0, [0])  # the no-op move this host can make
        helper.wait(30)
        _fake_proc(proc, child.pid, next(after_pass))
        return helper

    monkeypatch.setattr(pmemory, "_start_move", start_and_show)
    try:
        moved = pmemory.move_to_node(proc, child.pid, 0)
    finally:
        child.kill()
        child.wait()
    assert len(started) == passes and started[0] == [1]
    assert moved.error is None and moved.background is None
    assert moved.share == pytest.approx(share)
    assert moved.before == {1: 1000 * 4096}


def test_doctor_numa_check_knows_isolated_cpus_and_the_cpu_sets(tmp_path):
    from hookpack.action import Paths
    from hookpack.config import load_config
    from hookpack.doctor import numa_check

    sysfs = tmp_path / "sys"
    write_sysfs(sysfs, nodes=1, cores_per_node=4, threads=1)
    (sysfs / "devices/system/cpu/isolated").write_text("3\n")

    def check(pinning: str):
        path = tmp_path / "hookpack.toml"
        path.write_text(f'[paths]\nsysfs_root = "{sysfs}"\n\n[pinning]\nenabled = true\n'
                        f"{pinning}\n")
        path.chmod(0o600)
        cfg = load_config(path, required=True)
        return numa_check(cfg, Paths.from_config(cfg))

    ok = check("")
    assert ok.status == "pass" and "isolated (isolcpus) CPU(s) 3" in ok.message, ok
    bad = check('dedicated_cpus = "2-5"')
    assert bad.status == "warn" and "dedicated_cpus names CPU(s)" in bad.message, bad
    bad = check('shared_cpus = "0-3"')
    assert bad.status == "warn" and "shared_cpus names isolated CPU(s) [3]" in bad.message


def test_the_move_helper_exit_codes_and_the_bounded_wait():
    """The helper process's contract, and a wait that gives up at the deadline."""
    assert pmemory._main(["x"]) == pmemory.HELPER_FAILED
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pmemory._main([str(child.pid), "0", "0"]) == 0
        assert pmemory._wait(child, lambda: 0.0) is None  # still running: not waited for
    finally:
        child.kill()
        child.wait()
    assert pmemory._main([str(child.pid), "0", "0"]) == errno.ESRCH
    done = subprocess.Popen([sys.executable, "-m", "hookpack.actions.pinning.memory", "x"])
    assert pmemory._wait(done, lambda: 30.0) == pmemory.HELPER_FAILED


def test_rebalance_keeps_clear_of_every_cpu_a_cpu_mask_names(host):
    from hookpack.actions.pinning.node import rebalance

    kvm, proc = host / "kvm", host / "proc"
    write_qemu(proc, kvm, "masked.example.test", 100, 2, {100: {0, 1}, 101: {0, 1}},
               cpu_mask="0-3")  # single-mask form: pins no vCPU thread 1:1, takes 0-3
    write_qemu(proc, kvm, "a.example.test", 200, 1, {200: set(range(8)), 201: set(range(8))})
    state = observe_node(host / "sys", kvm, proc, {"a.example.test": [201]})
    outcome = rebalance(state, Policy(), set())
    (plan,) = [p for p in outcome.plans if p.name == "a.example.test"]
    assert plan.mode == PINNED and plan.node == 1
    assert not (set(plan.vcpu_cpus) | plan.emulator) & {0, 1, 2, 3}

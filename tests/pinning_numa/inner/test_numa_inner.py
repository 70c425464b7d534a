"""Pinning on a real multi-node kernel (run inside the hostguest with 2 or 4 NUMA nodes).

Memory follows the vCPUs (after start and after an incoming migration), instances
that one node cannot hold land on different nodes, a cpuset-restricted QEMU gets only
CPUs of its cpuset, narrowed/refused masks are failures, vhost-net workers go with the
emulator threads, isolated CPUs only for dedicated vCPUs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from hookpack.action import Paths
from hookpack.actions.pinning.action import status as pinning_status
from hookpack.actions.pinning.memory import describe_usage, node_usage
from hookpack.config import load_config
from hookpack.result import Outcome
from tests.pinning_numa.inner.numanode import allowed, qmp, rss_kib, share_on, threads, topology

TOPO = topology()
PROC = Path("/proc")
NODES = sorted(TOPO.nodes)
LAST = NODES[-1]
CPUSET_NODE = NODES[1]  # never holds the isolated CPU of the 4-node run
EXPECTED = int(os.environ.get("NUMA_NODES", "0"))


def test_the_guest_has_the_nodes_asked_for():
    assert len(NODES) == EXPECTED >= 2, (NODES, EXPECTED)


def node_cpus(node: int) -> frozenset[int]:
    return frozenset(TOPO.nodes[node])


def assert_on_node(inner, node: int, min_share: float = 0.95) -> None:
    vcpus = inner.vcpu_threads()
    for tid in threads(inner.pid):
        assert allowed(tid) <= node_cpus(node), (tid, allowed(tid), node)
    for tid in vcpus:
        assert len(allowed(tid)) == 1
    share = share_on(inner.pid, node)
    print(f"{inner.name}: {share:.1%} of {rss_kib(inner.pid) >> 10} MiB resident on node {node}")
    assert share >= min_share, share


def test_memory_follows_the_vcpus_after_start(node):
    inst = node.start("start1.example.test", on_node=LAST)
    print(f"after start, before the hook: {describe_usage(node_usage(PROC, inst.pid))}")
    assert share_on(inst.pid, 0) < 0.5  # the test is real: it starts on the other node
    result = node.hook(inst.name)
    assert result.outcome is Outcome.CHANGED, result
    assert "NUMA node 0" in result.message and "; memory " in result.message, result
    assert any(" memory: " in c and "moved to NUMA node 0" in c for c in result.changes)
    assert_on_node(inst, 0)
    again = node.hook(inst.name)
    assert again.outcome is Outcome.NOCHANGE, again
    # hookpack status: memory per node beside the vCPUs' node
    cfg = load_config(node.config())
    part = pinning_status(cfg, Paths.from_config(cfg), [inst.name])[inst.name]
    mem = part.data["memory"]
    assert mem["vcpu_nodes"] == [0] and mem["local_share"] >= 0.95, mem
    assert any(line.startswith("memory: node 0 ") and "vCPUs on node 0" in line
               for line in part.lines), part.lines


def test_memory_follows_the_vcpus_after_an_incoming_migration(node, tmp_path):
    blob = tmp_path / "ram.bin"
    blob.write_bytes(os.urandom(96 << 20))  # non-zero RAM, so the migration writes it
    sock = tmp_path / "migrate.sock"
    source = node.start("mig1.example.test", on_node=0, prealloc=False, register=False,
                        qmp_path=tmp_path / "source.qmp",
                        extra=["-device", f"loader,file={blob},addr=0x1000000,force-raw=on"])
    target = node.start("mig1.example.test", on_node=LAST, prealloc=False,
                        extra=["-incoming", f"unix:{sock}"])
    qmp(source.qmp_path, "migrate", uri=f"unix:{sock}")
    deadline = time.monotonic() + 300
    while (state := qmp(source.qmp_path, "query-migrate").get("status")) != "completed":
        assert state not in ("failed", "cancelled") and time.monotonic() < deadline, state
        time.sleep(0.2)
    node.stop(source)
    before = share_on(target.pid, LAST)
    print("after the incoming migration, before the hook: "
          f"{describe_usage(node_usage(PROC, target.pid))}")
    assert rss_kib(target.pid) > 96 << 10 and before > 0.5, before  # written on LAST
    result = node.hook(target.name, hpath="instance-migrate")
    assert result.outcome is Outcome.CHANGED, result
    assert_on_node(target, 0)


def test_two_instances_land_on_different_nodes(node):
    """A node has 2 CPUs: one 1-vCPU instance + its emulator CPU fill it."""
    a = node.start("two-a.example.test", on_node=LAST)
    b = node.start("two-b.example.test", on_node=LAST)
    assert node.hook(a.name).outcome is Outcome.CHANGED
    result = node.hook(b.name)
    assert result.outcome is Outcome.CHANGED and "NUMA node 1" in result.message, result
    assert_on_node(a, 0)
    assert_on_node(b, 1)


def free_mib(numa_node: int) -> int:
    meminfo = Path(f"/sys/devices/system/node/node{numa_node}/meminfo").read_text()
    for line in meminfo.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "MemFree:":
            return int(parts[3]) >> 10
    raise AssertionError(meminfo)


def test_a_node_without_the_memory_is_passed_over(node):
    """Every node has the CPUs; the first node, the one the default placement (pack)
    takes between equal nodes, is left without the instance's memory free (a QEMU held
    there by numactl --membind takes all but 32 MiB of it): the instance goes to the
    next node, and its memory with it."""
    first, second = NODES[0], NODES[1]
    control = node.start("mem-control.example.test")
    assert node.hook(control.name).outcome is Outcome.CHANGED
    assert_on_node(control, first)  # with the memory there, the first node is taken
    node.stop(control)

    hog_mib = free_mib(first) - 32
    node.start("mem-hog", mem_mib=hog_mib, register=False,
               numactl=(f"--membind={first}", f"--cpunodebind={first}"))
    print(f"node {first}: {free_mib(first)} MiB free beside a {hog_mib} MiB QEMU")
    inst = node.start("mem-a.example.test", mem_mib=160)
    result = node.hook(inst.name)
    assert result.outcome is Outcome.CHANGED and f"NUMA node {second}" in result.message, result
    assert_on_node(inst, second)


def test_cpuset_restricted_qemu_gets_only_cpus_of_its_cpuset(node):
    cg = node.cgroup(f"hp-cpuset-{os.getpid()}")
    (cg / "cpuset.cpus").write_text(",".join(map(str, sorted(node_cpus(CPUSET_NODE)))))
    (cg / "cpuset.mems").write_text(str(CPUSET_NODE))
    inst = node.start("cpuset1.example.test", on_node=0, prealloc=False)
    (cg / "cgroup.procs").write_text(str(inst.pid))
    result = node.hook(inst.name)
    assert result.outcome is Outcome.CHANGED, result
    assert f"NUMA node {CPUSET_NODE}" in result.message, result  # 0 is not in its cpuset
    for tid in threads(inst.pid):
        assert allowed(tid) <= node_cpus(CPUSET_NODE)
    assert node.hook(inst.name).outcome is Outcome.NOCHANGE


def _threaded(node, name: str) -> Path:
    """A cgroup v2 parent; a threaded child makes it "domain threaded"."""
    return node.cgroup(f"hp-thr-{name}-{os.getpid()}")


def _thread_cgroup(node, parent: Path, child: str, cpus: str) -> Path:
    path = node.cgroup(f"{parent.name}/{child}")
    (path / "cgroup.type").write_text("threaded")
    (parent / "cgroup.subtree_control").write_text("+cpuset")
    (path / "cpuset.cpus").write_text(cpus)
    return path


def test_refused_and_narrowed_masks_are_failure_lines(node):
    # refused: the vCPU thread sits in a threaded cgroup whose cpuset is CPU 0 only;
    # CPU 0 is reserved, so the plan asks another CPU and the kernel refuses (EINVAL)
    inst = node.start("refuse1.example.test", prealloc=False)
    parent = _threaded(node, "r")
    (parent / "cgroup.procs").write_text(str(inst.pid))
    child = _thread_cgroup(node, parent, "vcpu0", "0")
    vcpu = inst.vcpu_threads()[0]
    (child / "cgroup.threads").write_text(str(vcpu))
    result = node.hook(inst.name, pinning='reserved_cpus = "0"')
    assert result.outcome is Outcome.FAILED, result
    assert f"thread {vcpu} (vcpu 0): the kernel refused" in result.message, result
    assert "nochange" not in result.message
    node.stop(inst)
    # narrowed: an overcommitted instance floats on every CPU; one of its threads sits
    # in a cpuset of CPU 1 only, so the kernel keeps only CPU 1 of the mask
    many = node.start("narrow1.example.test", vcpus=len(TOPO.online) + 1, prealloc=False)
    parent = _threaded(node, "n")
    (parent / "cgroup.procs").write_text(str(many.pid))
    child = _thread_cgroup(node, parent, "t", "1")
    victim = many.vcpu_threads()[-1]
    (child / "cgroup.threads").write_text(str(victim))
    for _ in range(2):  # every run reports it, never `nochange`
        result = node.hook(many.name)
        assert result.outcome is Outcome.FAILED, result
        assert "node overcommitted" in result.message
        assert f"thread {victim} (floating): asked CPU(s) 0-" in result.message, result
        assert "the kernel narrowed it to 1" in result.message, result


def test_vhost_net_worker_goes_with_the_emulator_threads(node):
    tap = f"hpv{os.getpid() % 10000}"
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        inst = node.start("vhost1.example.test", on_node=LAST, prealloc=False, extra=[
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=on",
            "-device", "virtio-net-pci,netdev=n0"])
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and (p / "comm").read_text().strip() == f"vhost-{inst.pid}"]
        assert workers, "no vhost worker"  # kernel thread on this 6.1 guest kernel
        assert allowed(workers[0]) != frozenset({0})
        result = node.hook(inst.name)
        assert result.outcome is Outcome.CHANGED, result
        assert any(f"thread {workers[0]} (vhost)" in c for c in result.changes), result.changes
        vcpu = inst.vcpu_threads()[0]
        emulator = {allowed(t) for t in threads(inst.pid) if t != vcpu}
        assert emulator == {frozenset({0})}, emulator
        assert allowed(workers[0]) == frozenset({0})
    finally:
        for inner in list(node.procs):
            node.stop(inner)
        subprocess.run(["ip", "link", "del", tap], check=False)


def test_isolated_cpus_only_for_dedicated_vcpus(node):
    """Needs the guest booted with isolcpus=7 (tests/pinning_numa/test_numa_in_guest.py)."""
    (iso,) = sorted(TOPO.isolated)
    home = TOPO.node_of(iso)
    # default: nobody uses an isolated CPU, not even a floating instance
    many = node.start("iso-float.example.test", vcpus=len(TOPO.online) + 1, prealloc=False,
                      mem_mib=64)
    node.hook(many.name)
    assert all(iso not in allowed(t) for t in threads(many.pid))
    node.stop(many)
    # listed in dedicated_cpus: a vCPU may get it, emulator threads never
    cfg = f'dedicated_cpus = "{",".join(str(max(c)) for c in TOPO.nodes.values())}"'
    insts = [node.start(f"iso{n}.example.test", prealloc=False, mem_mib=64) for n in NODES]
    for inst in insts:
        assert node.hook(inst.name, pinning=cfg).outcome is Outcome.CHANGED
    last = insts[-1]
    vcpu = last.vcpu_threads()[0]
    assert allowed(vcpu) == frozenset({iso}) and TOPO.node_of(iso) == home
    assert all(iso not in allowed(t) for i in insts for t in threads(i.pid) if t != vcpu)


def _huge(n: int) -> Path:
    return Path(f"/sys/devices/system/node/node{n}/hugepages/hugepages-2048kB/nr_hugepages")


def _pools() -> dict[int, str]:
    return {n: _huge(n).read_text().strip() for n in NODES}


def test_hugetlbfs_memory_moves_even_without_free_huge_pages_there(node, tmp_path):
    """Ganeti's mem_path: -mem-path on hugetlbfs with -mem-prealloc. The target node's
    pool has no 2 MiB page: the kernel allocates fresh ones there for the move
    (alloc_migrate_hugetlb_folio) and the pages move; the pool follows them."""
    mnt = tmp_path / "huge"
    mnt.mkdir()
    saved = _pools()
    subprocess.run(["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mnt)],
                   check=True)
    try:
        _huge(0).write_text("0")
        _huge(LAST).write_text("40")  # 80 MiB, all on the node QEMU starts on
        assert _huge(LAST).read_text().strip() == "40"
        inst = node.start("huge1.example.test", on_node=LAST, mem_mib=64,
                          extra=["-mem-path", str(mnt)])
        usage = node_usage(PROC, inst.pid)
        print(f"hugetlbfs guest before the hook: {describe_usage(usage)}; 2 MiB pools "
              f"(nr_hugepages) per node: {_pools()}")
        assert usage.get(LAST, 0) >= 64 << 20
        result = node.hook(inst.name)
        assert result.outcome is Outcome.CHANGED, result
        assert_on_node(inst, 0)
        print(f"after the hook: 2 MiB pools per node: {_pools()}")
        assert int(_huge(0).read_text()) >= 32  # the 32 guest pages now count on node 0
        node.stop(inst)
    finally:
        for inner in list(node.procs):
            node.stop(inner)
        subprocess.run(["umount", str(mnt)], check=False)
        for n, count in saved.items():
            _huge(n).write_text(count)

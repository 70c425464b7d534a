"""Synthetic sysfs and /proc trees for pinning tests (real files in a temp dir).

CPU numbering follows what Linux shows on x86 servers: the first hardware thread
of every core first (cpu0..cpuN-1, node by node), the SMT siblings after them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from hookpack.actions.pinning.topology import format_cpulist


def write_sysfs(root: Path, nodes: int, cores_per_node: int, threads: int,
                offline: Iterable[int] = (), numa_dir: bool = True) -> dict[int, list[int]]:
    """Write ``devices/system/{cpu,node}``; returns node -> all its CPUs (incl. offline)."""
    offline = set(offline)
    cores = nodes * cores_per_node
    total = cores * threads
    cpu_dir = root / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    online = [c for c in range(total) if c not in offline]
    (cpu_dir / "online").write_text(format_cpulist(online) + "\n")
    (cpu_dir / "possible").write_text(f"0-{total - 1}\n")
    node_cpus: dict[int, list[int]] = {n: [] for n in range(nodes)}
    for core in range(cores):
        group = [core + t * cores for t in range(threads)]
        node_cpus[core // cores_per_node].extend(group)
        for cpu in group:
            d = cpu_dir / f"cpu{cpu}"
            d.mkdir(exist_ok=True)
            if cpu in offline:
                continue  # the kernel removes topology/ of an offline CPU
            (d / "topology").mkdir(exist_ok=True)
            (d / "topology" / "thread_siblings_list").write_text(format_cpulist(group) + "\n")
    if numa_dir:
        for n, cpus in node_cpus.items():
            d = root / "devices" / "system" / "node" / f"node{n}"
            d.mkdir(parents=True, exist_ok=True)
            # node<N>/cpulist lists online CPUs only (the kernel's node_to_cpumask)
            (d / "cpulist").write_text(format_cpulist(c for c in cpus if c not in offline) + "\n")
        (root / "devices" / "system" / "node" / "online").write_text(f"0-{nodes - 1}\n")
    return {n: sorted(c) for n, c in node_cpus.items()}


def write_qemu(proc_root: Path, kvm_dir: Path, name: str, pid: int, vcpus: int,
               affinities: Mapping[int, Iterable[int]], names: Mapping[int, str] | None = None,
               cpu_mask: str = "all") -> None:
    """A QEMU process under ``proc_root`` and its Ganeti runtime files under ``kvm_dir``."""
    (kvm_dir / "pid").mkdir(parents=True, exist_ok=True)
    (kvm_dir / "conf").mkdir(parents=True, exist_ok=True)
    (kvm_dir / "pid" / name).write_text(f"{pid}\n")
    argv = ["qemu-system-x86_64", "-name", name, "-m", "128", "-smp", str(vcpus)]
    (kvm_dir / "conf" / f"{name}.runtime").write_text(
        f'[{str(argv).replace(chr(39), chr(34))}, [], {{"cpu_mask": "{cpu_mask}"}}, []]\n')
    pdir = proc_root / str(pid)
    (pdir / "task").mkdir(parents=True, exist_ok=True)
    (pdir / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    for tid, cpus in affinities.items():
        t = pdir / "task" / str(tid)
        t.mkdir(exist_ok=True)
        (t / "comm").write_text((names or {}).get(tid, "qemu-system-x86") + "\n")
        (t / "status").write_text(f"Name:\tqemu-system-x86\nPid:\t{tid}\n"
                                  f"Cpus_allowed_list:\t{format_cpulist(cpus)}\n")

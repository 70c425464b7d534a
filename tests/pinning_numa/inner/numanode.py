"""Helpers for inner/ (inside the multi-node guest): real QEMU processes in a Ganeti 3.0 KVM layout.

Each inner QEMU is ``qemu-system-x86_64 -S`` (TCG, no guest OS): real vCPU threads
(QMP ``query-cpus-fast``), real resident memory (``-mem-prealloc``, or RAM written by a
``-device loader`` blob / an incoming migration). Every process is killed by pid at
teardown; cgroups and taps the tests create are removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hookpack.actions.pinning.memory import node_usage
from hookpack.actions.pinning.topology import read_topology
from hookpack.dispatch import dispatch
from tests.helpers.pinning import NODE, start_env

SYS = Path("/sys")


def topology():
    return read_topology(SYS)


def allowed(tid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(tid))


def threads(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def share_on(pid: int, node: int) -> float:
    usage = node_usage(Path("/proc"), pid)
    return usage.get(node, 0) / sum(usage.values())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def qmp(path: Path, command: str, **arguments) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        f = sock.makefile("rw")
        json.loads(f.readline())
        for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
            f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    break
        assert "error" not in reply, reply
        return reply["return"]


@dataclass
class Inner:
    name: str
    pid: int
    qmp_path: Path
    proc: subprocess.Popen[bytes]

    def vcpu_threads(self) -> list[int]:
        cpus = qmp(self.qmp_path, "query-cpus-fast")
        return [int(c["thread-id"]) for c in sorted(cpus, key=lambda c: c["cpu-index"])]


@dataclass
class Node:
    """A Ganeti KVM node's runtime dir and hookpack config, with inner QEMUs."""

    root: Path
    procs: list[Inner] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)

    @property
    def kvm_dir(self) -> Path:
        return self.root / "kvm"

    def start(self, name: str, *, vcpus: int = 1, mem_mib: int = 160, on_node: int | None = None,
              prealloc: bool = True, register: bool = True, extra: Sequence[str] = (),
              qmp_path: Path | None = None, numactl: Sequence[str] = ()) -> Inner:
        for d in ("pid", "ctrl", "conf"):
            (self.kvm_dir / d).mkdir(parents=True, exist_ok=True)
        qmp_path = qmp_path or self.kvm_dir / "ctrl" / f"{name}.qmp"
        argv = ["qemu-system-x86_64", "-S", "-name", name, "-display", "none", "-nodefaults",
                "-no-user-config", "-machine", "pc", "-accel", "tcg,thread=multi",
                "-smp", str(vcpus), "-m", f"{mem_mib}M",
                "-qmp", f"unix:{qmp_path},server=on,wait=off", *extra]
        if prealloc:
            argv.append("-mem-prealloc")
        if on_node is not None:  # first touch on that node: the memory starts there
            numactl = (*numactl, f"--cpunodebind={on_node}")
        if numactl:
            argv = ["numactl", *numactl, "--", *argv]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        inner = Inner(name, proc.pid, qmp_path, proc)
        self.procs.append(inner)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if qmp_path.exists():
                with contextlib.suppress(OSError):
                    qmp(qmp_path, "query-status")
                    break
            assert time.monotonic() < deadline, f"{name}: no QMP after 60 s"
            time.sleep(0.1)
        if register:
            (self.kvm_dir / "pid" / name).write_text(f"{proc.pid}\n")
        return inner

    def stop(self, inner: Inner) -> None:
        if inner.proc.poll() is None:
            inner.proc.send_signal(signal.SIGKILL)
        inner.proc.wait(timeout=30)
        with contextlib.suppress(FileNotFoundError):
            if (self.kvm_dir / "pid" / inner.name).read_text().strip() == str(inner.pid):
                (self.kvm_dir / "pid" / inner.name).unlink()

    def config(self, pinning: str = "") -> Path:
        path = self.root / "hookpack.toml"
        path.write_text(
            f'[log]\nsyslog = false\n\n[hook]\ndeadline = 120\n\n[node]\nfqdn = "{NODE}"\n\n'
            f'[paths]\nkvm_dir = "{self.kvm_dir}"\nrun_dir = "{self.root}/run"\n'
            f'state_dir = "{self.root}/run/state"\nspool_dir = "{self.root}/run/spool"\n\n'
            f"[pinning]\nenabled = true\n{pinning}\n")
        path.chmod(0o600)
        return path

    def hook(self, name: str, pinning: str = "", hpath: str = "instance-start"):
        out = io.StringIO()
        result = dispatch(start_env(name, hpath=hpath), config=self.config(pinning),
                          stream=out)
        runs = [r for r in result.runs if r.spec.name == "pinning"]
        assert len(runs) == 1, out.getvalue()
        print(out.getvalue().strip())
        return runs[0].result

    def cgroup(self, rel: str) -> Path:
        root = cgroup2_root()
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        self.cgroups.append(path)
        return path


def cgroup2_root() -> Path:
    """The guest's cgroup v2 hierarchy with the cpuset controller for children."""
    root = SYS / "fs" / "cgroup"
    if not (root / "cgroup.controllers").exists():
        subprocess.run(["mount", "-t", "cgroup2", "none", str(root)], check=True)
    (root / "cgroup.subtree_control").write_text("+cpuset")
    return root


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    try:
        yield n
    finally:
        for inner in n.procs:
            with contextlib.suppress(Exception):
                n.stop(inner)
        for cg in reversed(n.cgroups):
            with contextlib.suppress(OSError):
                cg.rmdir()

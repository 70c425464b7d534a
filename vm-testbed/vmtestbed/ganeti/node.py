"""One lab node: a network namespace, plus a holder process owning its UTS and mount namespaces.

The holder is ``sleep infinity`` started through ``nsenter --net`` and ``unshare --uts
--mount --propagation private`` (both exec, so the pid we get is the sleep's). Every
mount the node needs is then made from outside with ``nsenter -t <holder> -m``: the
private tmpfs on ``/run``, a node-specific sysfs, and bind mounts of per-node copies of
Ganeti's, ssh's and hookpack's state directories. Nothing is mounted in the root mount
namespace, so the node's mounts vanish with its last process.

A node of a Ganeti 3.1 lab also has a root filesystem of its own: ``tree`` (the cached
Debian 13 tree of :mod:`vmtestbed.trixie`) under an overlay whose upper directory
is the node's. The holder mounts the overlay, then chroots into it before it becomes
``sleep``; every other mount is made below that root, and commands run on the node enter
its root too (``nsenter -r -w``). The guests' kernel, the checkout and hookpack's lab
venv are bound into the root at their host paths, so the same paths work on both labs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmtestbed.ganeti import proc
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.layout import (
    PRIVATE_DIRS,
    SEEDED_DIRS,
    SHARED_FILE_STORAGE,
    SWITCH,
    NodeSpec,
)


class Node:
    """A lab node built from ``spec``; ``shared_storage`` is bound on every node.

    ``tree``: the root filesystem the node chroots into (a 3.1 lab), or None (3.0: the
    host's own filesystem)."""

    def __init__(self, spec: NodeSpec, tree: Path | None = None) -> None:
        self.spec = spec
        self.tree = tree

    # -- facts ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.spec.netns}"

    def holder_pid(self) -> int | None:
        """The holder's pid if it is alive, else None."""
        try:
            pid = int(self.spec.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except FileNotFoundError:
            return None
        return pid if comm == "sleep" else None

    def host_path(self, node_path: str) -> Path:
        """Where the node's private directory ``node_path`` (or a file in it) lives on the host."""
        for mnt, src in sorted(PRIVATE_DIRS.items(), key=lambda kv: -len(kv[0])):
            if node_path == mnt or node_path.startswith(mnt + "/"):
                return self.spec.state_dir / src / node_path[len(mnt) :].lstrip("/")
        raise LabError(f"{self.name}: {node_path} is not in a private directory of the node")

    # -- running things on the node -----------------------------------------------------
    def nsenter(self, argv: Sequence[str]) -> list[str]:
        chroot = ["-r", "-w"] if self.tree else []
        return ["nsenter", "-t", self._live_holder(), "-n", "-u", "-m", *chroot, "--", *argv]

    def in_netns(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a host program in the node's network and UTS namespaces, on the
        host's filesystem: for the test's own servers and clients (receivers, PowerDNS,
        NetBox), which a 3.1 node's Debian 13 root does not have."""
        return ["nsenter", "-t", self._live_holder(), "-n", "-u", "--", *argv]

    def _live_holder(self) -> str:
        pid = self.holder_pid()
        if pid is None:
            raise LabError(f"{self.name}: the node's holder process is gone; run `down` then `up`")
        return str(pid)

    def run(
        self, argv: Sequence[str], *, check: bool = False, timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return proc.run(self.nsenter(argv), where=self.name, check=check, timeout=timeout,
                        input=input)

    # -- building -------------------------------------------------------------------------
    def create(self, shared_storage: Path, binds: Mapping[str, Path] | None = None) -> None:
        """Make the namespaces, the wiring to the switch, the mounts, and start sshd."""
        s = self.spec
        self._make_dirs()
        proc.run(["ip", "netns", "add", s.netns])
        proc.run(["ip", "link", "add", s.veth_host, "type", "veth", "peer", "name", s.veth_node,
                  "netns", s.netns])
        proc.run(["ip", "link", "set", s.veth_host, "master", SWITCH, "up"])
        ipn = ["ip", "-n", s.netns]
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "set", s.veth_node, "name", "eth1"],
            ["link", "add", "br0", "type", "bridge"],
            ["link", "set", "eth1", "master", "br0", "up"],
            ["addr", "add", f"{s.ip}/24", "dev", "br0"],
            ["link", "set", "br0", "up"],
        ):
            proc.run(ipn + cmd, where=self.name)
        self._start_holder()
        self._mount(shared_storage, binds or {})
        self.run(["hostname", s.name], check=True)
        self.run(["/usr/sbin/sshd", "-o", f"ListenAddress={s.ip}"], check=True)

    def _make_dirs(self) -> None:
        root = self.spec.state_dir
        root.mkdir(parents=True, exist_ok=True)
        seeds = self.tree or Path("/")
        for mnt, src in PRIVATE_DIRS.items():
            dst = root / src
            seed = seeds / mnt.lstrip("/")
            if mnt in SEEDED_DIRS and seed.is_dir():
                shutil.copytree(seed, dst, symlinks=True, dirs_exist_ok=True)
            else:
                dst.mkdir(parents=True, exist_ok=True)
        (root / "root-ssh").chmod(0o700)
        srv = root / PRIVATE_DIRS["/srv/ganeti"]
        for sub in ("file-storage", "shared-file-storage", "os"):
            (srv / sub).mkdir(exist_ok=True)

    def _holder_argv(self) -> list[str]:
        unshare = ["nsenter", f"--net={self.netns_path}", "unshare", "--uts", "--mount",
                   "--propagation", "private"]
        if self.tree is None:
            return [*unshare, "sleep", "infinity"]
        root = self.spec.root
        for d in (root, self.spec.state_dir / "upper", self.spec.state_dir / "work"):
            d.mkdir(parents=True, exist_ok=True)
        overlay = (f"lowerdir={self.tree},upperdir={self.spec.state_dir / 'upper'},"
                   f"workdir={self.spec.state_dir / 'work'}")
        return [*unshare, "sh", "-c",
                'mount -t overlay overlay -o "$1" "$2" && exec chroot "$2" sleep infinity',
                "holder", overlay, str(root)]

    def _start_holder(self) -> None:
        holder = subprocess.Popen(
            self._holder_argv(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.spec.pid_file.write_text(f"{holder.pid}\n")
        deadline = time.monotonic() + 10
        while self.holder_pid() is None:  # until nsenter and unshare have exec'd into sleep
            if holder.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{self.name}: the namespace holder did not start "
                               f"(exit {holder.returncode}); is util-linux installed?")
            time.sleep(0.01)

    def _mount(self, shared_storage: Path, binds: Mapping[str, Path]) -> None:
        """The node's mounts, made from outside in its mount namespace; a chrooted
        node's below its root (``r``), with the kernel filesystems and ``binds``
        (path on the node: host directory)."""
        pid = self.holder_pid()
        assert pid is not None
        m = ["nsenter", "-t", str(pid), "-m", "-n", "--"]
        r = str(self.spec.root) if self.tree else ""
        cmds: list[list[str]] = []
        if self.tree:
            cmds += [["mount", "-t", "proc", "proc", f"{r}/proc"],
                     ["mount", "--rbind", "/dev", f"{r}/dev"]]
        cmds += [
            ["mount", "-t", "sysfs", "sysfs", f"{r}/sys"],  # shows this netns's devices
            ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{r}/run"],
            ["mkdir", "-p", f"{r}/run/ganeti", f"{r}/run/lock", f"{r}/run/sshd"],
            ["chmod", "1777", f"{r}/run/lock"],
        ]
        targets = {mnt: str(self.spec.state_dir / src) for mnt, src in PRIVATE_DIRS.items()}
        targets[SHARED_FILE_STORAGE] = str(shared_storage)
        targets.update({mnt: str(src) for mnt, src in binds.items()} if self.tree else {})
        for mnt, src in targets.items():
            if self.tree:
                cmds.append(["mkdir", "-p", f"{r}{mnt}"])
            cmds.append(["mount", "--bind", src, f"{r}{mnt}"])
        for cmd in cmds:
            proc.run(m + cmd, where=self.name)

    # -- tearing down ---------------------------------------------------------------------
    def destroy(self) -> list[int]:
        """Kill every process in the node's namespace, delete its links and netns.

        Returns the pids it killed.
        """
        pids = proc.pids_in_netns(self.netns_path)
        proc.kill_pids(pids)
        s = self.spec
        if Path(self.netns_path).exists():
            proc.run(["ip", "netns", "del", s.netns], check=False)
        if Path(f"/sys/class/net/{s.veth_host}").exists():
            proc.run(["ip", "link", "del", s.veth_host], check=False)
        s.pid_file.unlink(missing_ok=True)
        return pids

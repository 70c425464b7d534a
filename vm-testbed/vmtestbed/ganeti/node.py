"""One lab node: a network namespace, plus a holder process owning its UTS and mount namespaces.

The holder is ``sleep infinity`` started through ``nsenter --net`` and ``unshare --uts
--mount --propagation private`` (both exec, so the pid we get is the sleep's). Every
mount the node needs is then made from outside with ``nsenter -t <holder> -m``: the
private tmpfs on ``/run``, a node-specific sysfs, and bind mounts of per-node copies of
Ganeti's, ssh's and hookpack's state directories. Nothing is mounted in the root mount
namespace, so the node's mounts vanish with its last process.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
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
    """A lab node built from ``spec``; ``shared_storage`` is bound on every node."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec

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
        pid = self.holder_pid()
        if pid is None:
            raise LabError(f"{self.name}: the node's holder process is gone; run `down` then `up`")
        return ["nsenter", "-t", str(pid), "-n", "-u", "-m", "--", *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = False, timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return proc.run(self.nsenter(argv), where=self.name, check=check, timeout=timeout,
                        input=input)

    # -- building -------------------------------------------------------------------------
    def create(self, shared_storage: Path) -> None:
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
        self._mount(shared_storage)
        self.run(["hostname", s.name], check=True)
        self.run(["/usr/sbin/sshd", "-o", f"ListenAddress={s.ip}"], check=True)

    def _make_dirs(self) -> None:
        root = self.spec.state_dir
        root.mkdir(parents=True, exist_ok=True)
        for mnt, src in PRIVATE_DIRS.items():
            dst = root / src
            if mnt in SEEDED_DIRS and Path(mnt).is_dir():
                shutil.copytree(mnt, dst, symlinks=True, dirs_exist_ok=True)
            else:
                dst.mkdir(parents=True, exist_ok=True)
        (root / "root-ssh").chmod(0o700)
        srv = root / PRIVATE_DIRS["/srv/ganeti"]
        for sub in ("file-storage", "shared-file-storage", "os"):
            (srv / sub).mkdir(exist_ok=True)

    def _start_holder(self) -> None:
        holder = subprocess.Popen(
            ["nsenter", f"--net={self.netns_path}", "unshare", "--uts", "--mount",
             "--propagation", "private", "sleep", "infinity"],
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

    def _mount(self, shared_storage: Path) -> None:
        pid = self.holder_pid()
        assert pid is not None
        m = ["nsenter", "-t", str(pid), "-m", "-n", "--"]
        cmds: list[list[str]] = [
            ["mount", "-t", "sysfs", "sysfs", "/sys"],  # shows this netns's devices
            ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run"],
            ["mkdir", "-p", "/run/ganeti", "/run/lock", "/run/sshd"],
            ["chmod", "1777", "/run/lock"],
        ]
        for mnt, src in PRIVATE_DIRS.items():
            cmds.append(["mount", "--bind", str(self.spec.state_dir / src), mnt])
        cmds.append(["mount", "--bind", str(shared_storage), SHARED_FILE_STORAGE])
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

"""The Ganeti lab: ``up`` builds nodes and a cluster, ``down`` leaves the machine as found."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed import trixie
from vmtestbed.console import SerialConsole
from vmtestbed.errors import TestbedError
from vmtestbed.ganeti import hookpack_install, hosts, osdef, packages, proc
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.guest import LabGuest, lab_guest
from vmtestbed.ganeti.layout import (
    CLUSTER_IP,
    CLUSTER_NAME,
    DEFAULT_VERSION,
    MAX_NODES,
    PRIVATE_DIRS,
    STATE_DIR,
    SWITCH,
    VERSIONS,
    NodeSpec,
    instance_ip,
    instance_name,
)
from vmtestbed.ganeti.node import Node

log = logging.getLogger("vmtestbed.ganeti")

STATE_FILE = STATE_DIR / "state.json"
SHARED_STORAGE = STATE_DIR / "shared-file-storage"
TREE_VENV_DIR = STATE_DIR / "hookpack-lab"  # a 3.1 lab's /opt/hookpack-lab
NodeRef = Node | NodeSpec | str | int


@dataclass
class DownReport:
    """What ``down`` found and removed."""

    cluster_destroyed: bool = False
    killed: dict[str, list[int]] = field(default_factory=dict)
    removed_paths: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Lab:
    """A one- to four-node Ganeti cluster whose nodes are namespaces on this machine.

    State lives in ``/var/lib/vmtestbed-lab`` (``state.json`` plus one directory per node),
    so a later process (``vm-testbed ganeti down``) can find and remove everything.
    """

    def __init__(self) -> None:
        self._state: dict[str, Any] = self._load()

    # -- state ----------------------------------------------------------------------------
    @staticmethod
    def _load() -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            return {}
        return data

    def _save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        tmp.replace(STATE_FILE)

    @property
    def is_up(self) -> bool:
        return bool(self._state.get("cluster"))

    @property
    def timings(self) -> dict[str, float]:
        t: dict[str, float] = self._state.setdefault("timings", {})
        return t

    @property
    def version(self) -> str:
        """The Ganeti version the lab runs: ``3.0`` (this host's) or ``3.1`` (Debian 13's)."""
        return str(self._state.get("version", DEFAULT_VERSION))

    @property
    def tree(self) -> Path | None:
        """The Debian 13 tree a 3.1 lab's nodes chroot into; None for 3.0."""
        t = self._state.get("tree")
        return Path(t) if t else None

    @property
    def guest(self) -> LabGuest:
        g = self._state["guest"]
        return LabGuest(kernel=Path(g["kernel"]), initrd=Path(g["initrd"]), real=g["real"])

    # -- nodes ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        return [Node(NodeSpec(i), self.tree) for i in self._state.get("nodes", [])]

    @property
    def master(self) -> Node:
        return Node(NodeSpec(self._state.get("master", 1)), self.tree)

    def node(self, ref: NodeRef) -> Node:
        """The node for ``ref``: a Node, an index, ``node2`` or ``node2.example.test``."""
        if isinstance(ref, Node):
            return ref
        if isinstance(ref, NodeSpec):
            return Node(ref, self.tree)
        for n in self.nodes:
            if ref in (n.spec.index, n.spec.short, n.spec.name, str(n.spec.index)):
                return n
        raise LabError(f"no lab node {ref!r}; nodes are {[n.name for n in self.nodes]}")

    def run_on(
        self, node: NodeRef, argv: Sequence[str], *, check: bool = False, timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``node`` (``nsenter -t <holder> -n -u -m``)."""
        return self.node(node).run(argv, check=check, timeout=timeout, input=input)

    def gnt(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run a Ganeti command on the master: ``lab.gnt("gnt-instance", "list")``."""
        return self.master.run(args, check=check, timeout=timeout)

    def node_file(self, node: NodeRef, path: str) -> Path:
        """Host path of ``path`` in one of ``node``'s private directories (to read its files)."""
        return self.node(node).host_path(path)

    def node_root(self, node: NodeRef) -> Path:
        """``/proc/<holder>/root``: the node's whole filesystem view (incl. its ``/run``)."""
        pid = self.node(node).holder_pid()
        if pid is None:
            raise LabError(f"{self.node(node).name}: holder gone")
        return Path(f"/proc/{pid}/root")

    # -- up ---------------------------------------------------------------------------------
    def clear_leftover(self, wait: float = 0) -> None:
        """Bring down a lab whose owning session died; refuse to touch a lab that a human
        brought up (``owner: cli``). A lab whose owner is alive or unknown may be in use:
        wait up to ``wait`` seconds for it to go away. Call with the :class:`LabLock`
        held."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._clear_leftover()
            except LabError as e:
                if "may be in use" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def _clear_leftover(self) -> None:
        self._state = self._load()
        if not self._state and not STATE_FILE.exists():
            return
        owner = self._state.get("owner", {})
        if owner.get("kind") == "cli":
            raise LabError("a lab brought up with `vm-testbed ganeti up` is up (a human may be "
                           "using it): run `vm-testbed ganeti down` first")
        if not owner or Path(f"/proc/{owner['pid']}").exists():
            # no owner: made by code that predates the lock; a live owner: a session that
            # did not take the lock. Either may be in use: never tear it down from here.
            raise LabError(f"a lab is up, owned by {owner or 'an unknown session'}; it may be "
                           "in use: wait for it, or run `vm-testbed ganeti down`")
        log.info("bringing down a lab left by %s (pid %s)", owner.get("kind", "an unknown "
                 "session"), owner.get("pid", "?"))
        self.down()

    def up(self, nodes: int = 2, owner: str = "cli", version: str = DEFAULT_VERSION,
           ) -> dict[str, float]:
        """Install packages, build ``nodes`` nodes, init the cluster, add the other nodes.

        ``version`` 3.0 runs this host's Ganeti; 3.1 builds (once, cached) the Debian 13
        tree of :mod:`vmtestbed.trixie` and chroots every node into an overlay of it.

        ``owner`` (``cli``, ``pytest``, ``demo``) goes into the state: labs of dead
        sessions are cleaned up by the next session, ``cli`` labs never. Hold a
        :class:`~vmtestbed.ganeti.lock.LabLock` around it. Raises LabError if a lab is
        already up (run ``down`` first). On failure the partial lab stays so it can be
        inspected; ``down`` removes it.
        """
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"--nodes must be 1..{MAX_NODES}, not {nodes}")
        if version not in VERSIONS:
            raise LabError(f"--version must be one of {', '.join(VERSIONS)}, not {version}")
        if STATE_FILE.exists():
            raise LabError(f"a lab is already up or was not brought down ({STATE_FILE}): "
                           "run `vm-testbed ganeti down` first")
        t_install = packages.ensure_installed() if version == "3.0" else 0.0
        start = time.monotonic()
        self._state = {"nodes": [], "created_dirs": [], "timings": {}, "version": version,
                       "owner": {"kind": owner, "pid": os.getpid()}}
        if t_install:
            self.timings["packages_install"] = round(t_install, 1)
        self._save()
        if version != "3.0":
            with self._timed("tree"):
                self._state["tree"] = str(trixie.build_tree())
        with self._timed("guest_image"):
            guest = lab_guest()
        self._state["guest"] = {"kernel": str(guest.kernel), "initrd": str(guest.initrd),
                                "real": guest.real}
        if self.tree is None:  # a chrooted node makes its mount points in its own root
            self._make_mountpoints()
        SHARED_STORAGE.mkdir(parents=True, exist_ok=True)
        specs = [NodeSpec(i) for i in range(1, nodes + 1)]
        names = [(s.ip, s.name) for s in specs] + [(CLUSTER_IP, CLUSTER_NAME)]
        hosts.add(names)
        self._state["hosts"] = True
        with self._timed("nodes"):
            if not Path(f"/sys/class/net/{SWITCH}").exists():
                proc.run(["ip", "link", "add", SWITCH, "type", "bridge"])
                proc.run(["ip", "link", "set", SWITCH, "up"])
            self._state["switch"] = True
            for s in specs:
                self._state["nodes"].append(s.index)
                self._save()
                node = Node(s, self.tree)
                node.create(SHARED_STORAGE, self._binds(guest) if self.tree else None)
                if self.tree:
                    hosts.add(names, self.node_root(node) / "etc/hosts")
                osdef.write(node.host_path("/srv/ganeti/os"))
                node.host_path("/etc/ganeti/file-storage-paths").write_text(
                    "/srv/ganeti/file-storage\n/srv/ganeti/shared-file-storage\n")
        with self._timed("cluster_init"):
            self._init_cluster(guest)
        for s in specs[1:]:
            with self._timed(f"node_add_{s.short}"):
                self._add_node(Node(s, self.tree))
        self.timings[f"up_{nodes}_nodes"] = round(time.monotonic() - start, 1)
        self._save()
        return dict(self.timings)

    def _binds(self, guest: LabGuest) -> dict[str, Path]:
        """What a chrooted node sees of the host, at the host's paths: the guests' kernel
        and initrd, this checkout, and hookpack's lab venv directory (built in the tree)."""
        dirs = {guest.kernel.parent, guest.initrd.parent, hookpack_install.REPO}
        binds = {str(d): d for d in dirs}
        binds[str(hookpack_install.VENV.parent)] = TREE_VENV_DIR
        TREE_VENV_DIR.mkdir(parents=True, exist_ok=True)
        return binds

    def _make_mountpoints(self) -> None:
        """Bind mounts need their target directory in the shared filesystem: make the missing
        ones (empty) and remember them, so ``down`` removes exactly those."""
        created: list[str] = self._state["created_dirs"]
        for mnt in PRIVATE_DIRS:
            missing = []
            p = Path(mnt)
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                d.mkdir()
                created.append(str(d))
        self._save()

    def _init_cluster(self, guest: LabGuest) -> None:
        hv = ",".join([
            "kvm_path=/usr/bin/qemu-system-x86_64",  # as `kvm` QEMU picks KVM: guests hang here
            "kvm_flag=disabled",  # leaves the accelerator to QEMU's default: TCG
            f"kernel_path={guest.kernel}",
            f"initrd_path={guest.initrd}",
            "kernel_args=console=ttyS0",
            "serial_console=true",
            "vnc_bind_address=",
            "vhost_net=false",  # 3.1's default is true; this kernel has no /dev/vhost-net
        ])
        self.gnt(
            "gnt-cluster", "init", "--enabled-hypervisors=kvm",
            "--enabled-disk-templates=file,sharedfile,diskless",
            "--master-netdev=br0", "--master-netmask=24",
            "--nic-parameters=link=br0,mode=bridged", "--no-etc-hosts",
            "-H", f"kvm:{hv}", CLUSTER_NAME,
        )
        self._state["cluster"] = CLUSTER_NAME
        self._state["master"] = 1
        self._save()
        # the default instance policy wants 1 GiB disks and more memory than a lab guest
        self.gnt(
            "gnt-cluster", "modify", "--ipolicy-bounds-specs",
            "min:disk-size=16,cpu-count=1,disk-count=1,memory-size=64,nic-count=0,spindle-use=1"
            "/max:disk-size=1048576,cpu-count=8,disk-count=16,memory-size=32768,nic-count=8,"
            "spindle-use=12",
        )

    def _add_node(self, node: Node) -> None:
        pub = self.master.host_path("/root/.ssh/id_rsa.pub").read_text()
        auth = node.host_path("/root/.ssh/authorized_keys")
        auth.write_text(pub)
        auth.chmod(0o600)
        # without --no-ssh-key-check ssh asks about the host key with no terminal, and fails
        self.gnt("gnt-node", "add", "--no-ssh-key-check", node.name)
        node.run(["/usr/lib/ganeti/daemon-util", "start", "ganeti-confd"], check=True)

    @contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[what] = round(time.monotonic() - t0, 1)
        self._save()

    def install_hookpack(self) -> dict[str, float]:
        """Build the hookpack venv from this checkout and install it on every node."""
        if not self.is_up:
            raise LabError("the lab is not up: run `vm-testbed ganeti up` first")
        with self._timed("hookpack_venv"):
            if self.tree is not None:
                hookpack_install.build_venv_on(self.master, TREE_VENV_DIR)
            elif hookpack_install.build_venv():
                self._state["hookpack_venv"] = str(hookpack_install.VENV.parent)
            else:
                self._state.setdefault("hookpack_venv", None)
            self._save()
        with self._timed("hookpack_nodes"):
            for node in self.nodes:
                hookpack_install.install_on(node)
        self._state["hookpack"] = True
        self._save()
        return dict(self.timings)

    @contextmanager
    def hookpack_config(self, extra: str, nodes: Sequence[NodeRef] | None = None,
                        ) -> Iterator[None]:
        """Append ``extra`` (TOML: whole sections) to the lab's hookpack config on
        ``nodes`` (default: all) for the ``with`` block; the lab config comes back after.
        Sections the lab config already has (log, record, policy) cannot be repeated."""
        targets = [self.node(n) for n in nodes] if nodes is not None else self.nodes
        files = [t.host_path("/etc/hookpack/hookpack.toml") for t in targets]
        try:
            for f in files:
                f.write_text(hookpack_install.LAB_CONFIG + "\n" + extra)
            yield
        finally:
            for f in files:
                f.write_text(hookpack_install.LAB_CONFIG)

    def records(self, node: NodeRef, path: str = hookpack_install.RECORD_PATH,
                ) -> list[dict[str, Any]]:
        """The recording action's lines on ``node`` (empty if none yet); ``path``: the
        record file on the node, if the config put it elsewhere."""
        try:
            text = self.node_file(node, path).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def clear_records(self) -> None:
        for node in self.nodes:
            self.node_file(node, hookpack_install.RECORD_PATH).unlink(missing_ok=True)

    # -- instances --------------------------------------------------------------------------
    def add_instance(
        self, index: int, node: NodeRef | None = None, *, template: str = "sharedfile",
        memory: int = 128, disk: str = "64M", start: bool = True, extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``gnt-instance add`` instance ``inst<index>`` with the lab's guest and NIC address."""
        name = instance_name(index)
        ip = instance_ip(index)
        argv = [
            "gnt-instance", "add", "-t", template, "-o", osdef.OS_SPEC,
            "--disk", f"0:size={disk}", "-B", f"memory={memory}",
            "--net", f"0:ip={ip}", "--no-ip-check", "--no-name-check",
            "-H", f"kvm:kernel_args=console=ttyS0 hp.ip={ip}/24 hp.hostname={name.split('.')[0]}",
            "-n", self.node(node or self.master).name,
        ]
        if not start:
            argv.append("--no-start")
        return self.gnt(*argv, *extra, name, check=check)

    def instance_info(self, name: str, fields: Sequence[str]) -> dict[str, str]:
        out = self.gnt("gnt-instance", "list", "--no-headers", "--separator=|",
                       "-o", ",".join(fields), name).stdout.strip()
        return dict(zip(fields, out.split("|"), strict=True))

    def primary_of(self, instance: str) -> Node:
        return self.node(self.instance_info(instance, ["pnode"])["pnode"])

    def qemu_pid(self, instance: str, node: NodeRef) -> int | None:
        """QEMU's pid from Ganeti's pid file on ``node``, if the file is there."""
        pid_file = self.node_root(node) / f"run/ganeti/kvm-hypervisor/pid/{instance}"
        try:
            return int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def console(self, instance: str, node: NodeRef | None = None) -> SerialConsole:
        """The instance's serial console (Ganeti's ``ctrl/<inst>.serial`` socket), reached
        through ``/proc/<holder>/root`` because it lives in the node's private ``/run``."""
        where = self.node(node) if node is not None else self.primary_of(instance)
        path = self.node_root(where) / f"run/ganeti/kvm-hypervisor/ctrl/{instance}.serial"
        return SerialConsole(path)

    def guest_run(self, instance: str, command: str, timeout: float = 30) -> str:
        """Run ``command`` in the guest's console shell (needs the testbed guest)."""
        con = self.console(instance)
        try:
            return con.run(command, timeout=timeout)
        finally:
            con.close()

    def wait_guest(self, instance: str, ip: str, timeout: float = 90) -> None:
        """Until the guest answers a ping from its primary and its console shell answers."""
        node = self.primary_of(instance)
        if not self.ping(node, ip, timeout=timeout):
            raise LabError(f"{instance} ({ip}) does not answer pings on {node.name} "
                           f"after {timeout:.0f} s")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.guest_run(instance, "true", timeout=5)
                return
            except TestbedError:
                if time.monotonic() > deadline:
                    raise

    def guest_uptime(self, instance: str) -> float:
        return float(self.guest_run(instance, "cut -d' ' -f1 /proc/uptime").strip())

    def guest_disk_bytes(self, instance: str, dev: str = "vda") -> int:
        return int(self.guest_run(instance, f"cat /sys/block/{dev}/size").strip()) * 512

    def ping(self, node: NodeRef, ip: str, timeout: float = 30) -> bool:
        """Whether ``ip`` answers a ping from ``node`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.run_on(node, ["busybox", "ping", "-c1", "-W1", ip], timeout=10)
            if r.returncode == 0:
                return True
            if time.monotonic() > deadline:
                return False

    # -- down -------------------------------------------------------------------------------
    def down(self) -> DownReport:
        """Destroy the cluster, kill the processes in the lab's namespaces, remove the
        namespaces, links, ``/etc/hosts`` lines and directories the lab made."""
        report = DownReport()
        on_disk = self._load()
        mine, theirs = self._state.get("owner"), on_disk.get("owner")
        if mine and on_disk and theirs != mine:
            # this object's lab is gone and another session's lab is up: not ours to remove
            raise LabError(f"the lab that is up belongs to {theirs}, not to {mine}: "
                           "not bringing it down")
        self._state = on_disk or self._state
        specs = [NodeSpec(i) for i in range(1, MAX_NODES + 1)]
        if self.is_up and self.master.holder_pid() is not None:
            report.cluster_destroyed = self._destroy_cluster(report)
        for s in specs:
            node = Node(s)
            if Path(node.netns_path).exists() or s.pid_file.exists():
                report.killed[s.name] = node.destroy()
        if Path(f"/sys/class/net/{SWITCH}").exists():
            proc.run(["ip", "link", "del", SWITCH], check=False)
        self._detach_loops(report)
        if hosts.remove():
            report.removed_paths.append("/etc/hosts lines")
        for d in reversed(self._state.get("created_dirs", [])):
            try:
                os.rmdir(d)
                report.removed_paths.append(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                report.problems.append(f"{d}: not removed: {e.strerror}")
        venv = self._state.get("hookpack_venv")
        if venv and Path(venv).exists():
            shutil.rmtree(venv)
            report.removed_paths.append(venv)
        if STATE_DIR.exists():
            shutil.rmtree(STATE_DIR)
            report.removed_paths.append(str(STATE_DIR))
        self._state = {}
        return report

    def _destroy_cluster(self, report: DownReport) -> bool:
        """Remove instances and nodes, then ``gnt-cluster destroy``; best effort, bounded."""
        try:
            names = self.gnt("gnt-instance", "list", "--no-headers", "-o", "name",
                             check=False, timeout=60).stdout.split()
            for name in names:
                r = self.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0",
                             "--ignore-failures", name, check=False, timeout=180)
                if r.returncode:
                    report.problems.append(f"gnt-instance remove {name}: {r.stderr.strip()[-300:]}")
            for node in self.nodes:
                if node.spec.index != self._state.get("master", 1):
                    self.gnt("gnt-node", "remove", node.name, check=False, timeout=120)
            r = self.gnt("gnt-cluster", "destroy", "--yes-do-it", check=False, timeout=120)
            if r.returncode:
                report.problems.append(f"gnt-cluster destroy: {r.stderr.strip()[-300:]}")
            return r.returncode == 0
        except (subprocess.TimeoutExpired, LabError) as e:
            report.problems.append(f"cluster destroy: {e}")
            return False

    def _detach_loops(self, report: DownReport) -> None:
        """Ganeti's file disks may be attached to loop devices (global, not namespaced):
        detach any whose backing file was in the lab's storage."""
        r = proc.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                     check=False)
        for line in r.stdout.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and (parts[1].startswith("/srv/ganeti/")
                                    or parts[1].startswith(str(STATE_DIR))):
                proc.run(["losetup", "-d", parts[0]], check=False)
                report.removed_paths.append(f"{parts[0]} ({parts[1]})")

    # -- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"up": self.is_up, "version": self.version, "nodes": {},
                               "timings": self.timings}
        for n in self.nodes:
            out["nodes"][n.name] = {"ip": n.spec.ip, "holder": n.holder_pid(),
                                    "processes": len(proc.pids_in_netns(n.netns_path))}
        if self.is_up and self.master.holder_pid():
            r = self.gnt("gnt-instance", "list", "--no-headers", "-o", "name,pnode,status",
                         check=False, timeout=60)
            out["instances"] = r.stdout.split("\n") if r.returncode == 0 else r.stderr
        return out

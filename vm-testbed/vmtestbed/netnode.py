"""Network node: a namespace laid out like a Ganeti KVM node's bridged network.

::

    netns <node>               netns <node>-up (upstream)
    +----------------------+    +------------------------+
    | br0 192.0.2.254/24   |    | eth0 192.0.2.1/24      |
    |  +- uplink ==========|====|= (veth)  iperf3 -s     |
    |  +- tapN  (guest)    |    +------------------------+
    |  +- fvmN  ===========|== eth0 in netns <node>-fN (fake VM)
    +----------------------+

Everything lives in namespaces this module creates (names ``hpt-<pid>-<hex>``),
so interface names inside them are fixed and several nodes can exist at once.
Addresses are from 192.0.2.0/24 (TEST-NET-1) and exist only in those namespaces.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmtestbed import host
from vmtestbed.errors import TestbedError

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000

DEFAULT_SUBNET = "192.0.2.0/24"
IPERF_PORT = 5201


@dataclass
class FakeVM:
    """A veth end in its own namespace, enslaved on the node's bridge: a VM without an OS.

    ``host_ifname`` is the bridge-side end in the node namespace; shape it as a tap.
    """

    netns: str
    host_ifname: str
    ip: str  # with prefix, e.g. 192.0.2.21/24
    mac: str

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    def run(self, argv: Sequence[str], timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the fake VM's namespace."""
        return host.run(host.netns_argv(self.netns, argv), check=check, timeout=timeout)

    def check_output(self, argv: Sequence[str], timeout: float = 60.0) -> str:
        """Runner for :func:`vmtestbed.iperf.measure`."""
        return self.run(argv, timeout=timeout).stdout


@dataclass
class NetNode:
    """A node netns with bridge ``br0``, an upstream netns with ``iperf3 -s``, fake VMs.

    Use as a context manager, or call :meth:`create` and :meth:`close`.
    ``close()`` removes exactly what this object recorded: its namespaces (which
    takes their taps, veths and bridge with them) and the pids it started.
    """

    name: str = field(default_factory=host.unique_name)
    subnet: str = DEFAULT_SUBNET
    bridge: str = "br0"
    iperf_server: bool = True
    namespaces: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    fake_vms: list[FakeVM] = field(default_factory=list)
    workdir: Path | None = None
    _next_host: int = 10

    # -- addresses ---------------------------------------------------------
    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def _host(self, n: int) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address + n)

    @property
    def upstream_ip(self) -> str:
        return self._host(1)

    @property
    def bridge_ip(self) -> str:
        return self._host(254)

    @property
    def upstream_netns(self) -> str:
        return f"{self.name}-up"

    def allocate_ip(self) -> str:
        """A free address with prefix (``192.0.2.N/24``) for a guest or fake VM."""
        ip = f"{self._host(self._next_host)}/{self.prefixlen}"
        self._next_host += 1
        return ip

    def with_prefix(self, ip: str) -> str:
        return ip if "/" in ip else f"{ip}/{self.prefixlen}"

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> NetNode:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        """Create namespaces, bridge, uplink and the iperf3 sink; undo all on failure."""
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        node, up = self.name, self.upstream_netns
        self._add_netns(node)
        self.exec(["ip", "link", "set", "lo", "up"])
        # STP is off on a new bridge, so ports forward at once (no forward delay).
        self.exec(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.exec(["ip", "addr", "add", f"{self.bridge_ip}/{self.prefixlen}",
                   "dev", self.bridge])
        self.exec(["ip", "link", "set", self.bridge, "up"])
        self._add_netns(up)
        host.run(["ip", "-n", up, "link", "set", "lo", "up"])
        self.exec(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
                   "netns", up])
        self.exec(["ip", "link", "set", "uplink", "master", self.bridge, "up"])
        host.run(["ip", "-n", up, "addr", "add", f"{self.upstream_ip}/{self.prefixlen}",
                  "dev", "eth0"])
        host.run(["ip", "-n", up, "link", "set", "eth0", "up"])
        if self.iperf_server:
            self._start_iperf_server()

    def _add_netns(self, name: str) -> None:
        host.run(["ip", "netns", "add", name])
        self.namespaces.append(name)

    def _start_iperf_server(self) -> None:
        assert self.workdir is not None
        log = self.workdir / "iperf3-server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                host.netns_argv(self.upstream_netns,
                                ["iperf3", "-s", "--forceflush", "-B", self.upstream_ip,
                                 "-p", str(IPERF_PORT)]),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=host.owned_env(), start_new_session=True,
            )
        self.pids.append(proc.pid)
        deadline = time.monotonic() + 10
        while "listening" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"{self.upstream_netns}: iperf3 -s did not start: "
                                   f"{log.read_text().strip()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Remove what this node created; safe to call twice, and after a partial create."""
        errors: list[str] = []
        for pid in reversed(self.pids):
            try:
                host.kill_owned(pid)
            except (OSError, TestbedError) as exc:
                errors.append(str(exc))
        self.pids.clear()
        # Deleting a namespace destroys its veths (both ends), taps and bridge.
        for ns in reversed(self.namespaces):
            proc = host.run(["ip", "netns", "delete", ns], check=False)
            if proc.returncode != 0 and Path(f"/run/netns/{ns}").exists():
                errors.append(f"netns {ns}: {proc.stderr.strip()}")
        self.namespaces.clear()
        self.fake_vms.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if errors:
            raise TestbedError(f"{self.name}: cleanup incomplete: {'; '.join(errors)}")

    # -- running things -----------------------------------------------------
    def exec(self, argv: Sequence[str], timeout: float = 60.0,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node namespace."""
        return host.run(host.netns_argv(self.name, argv), check=check, timeout=timeout)

    def upstream_exec(self, argv: Sequence[str], timeout: float = 60.0,
                      check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the upstream namespace."""
        return host.run(host.netns_argv(self.upstream_netns, argv), check=check,
                        timeout=timeout)

    # -- taps and fake VMs ------------------------------------------------
    def create_tap(self, bridge: str | None = None, vnet_hdr: bool = True) -> tuple[str, int]:
        """Create a tap the way Ganeti 3.0 does; return (kernel-given name, fd).

        Ganeti's ``netdev.OpenTap``: open /dev/net/tun, TUNSETIFF with an empty
        name (the kernel picks ``tap%d``), ``IFF_TAP | IFF_NO_PI | IFF_ONE_QUEUE``
        plus ``IFF_VNET_HDR`` when TUNGETFEATURES offers it (hvparam vnet_hdr
        defaults to True), one queue. The tap lives as long as an fd is open:
        hand the fd to QEMU, then close yours. Then, like kvm-ifup in bridged
        mode, set it up and enslave it to the bridge.
        """
        def open_tap() -> tuple[str, int]:
            fd = os.open("/dev/net/tun", os.O_RDWR)
            try:
                flags = IFF_TAP | IFF_NO_PI | IFF_ONE_QUEUE
                if vnet_hdr:
                    features = struct.unpack(
                        "I", fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0)))[0]
                    if features & IFF_VNET_HDR:
                        flags |= IFF_VNET_HDR
                res = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sh", b"", flags))
            except BaseException:
                os.close(fd)
                raise
            return struct.unpack("16sh", res)[0].strip(b"\x00").decode(), fd

        name, fd = host.call_in_netns(self.name, open_tap)
        try:
            self.exec(["ip", "link", "set", name, "master", bridge or self.bridge, "up"])
        except BaseException:
            os.close(fd)
            raise
        return name, fd

    def add_fake_vm(self, ip: str | None = None, mac: str | None = None) -> FakeVM:
        """A veth end in its own netns on the bridge; ``ip`` defaults to a free one."""
        idx = len(self.fake_vms)
        ns = f"{self.name}-f{idx}"
        fvm = FakeVM(netns=ns, host_ifname=f"fvm{idx}",
                     ip=self.with_prefix(ip or self.allocate_ip()), mac=mac or random_mac())
        self._add_netns(ns)
        self.exec(["ip", "link", "add", fvm.host_ifname, "type", "veth", "peer", "name", "eth0",
                   "address", fvm.mac, "netns", ns])
        self.exec(["ip", "link", "set", fvm.host_ifname, "master", self.bridge, "up"])
        fvm.run(["ip", "link", "set", "lo", "up"])
        fvm.run(["ip", "addr", "add", fvm.ip, "dev", "eth0"])
        fvm.run(["ip", "link", "set", "eth0", "up"])
        self.fake_vms.append(fvm)
        return fvm

    # -- persistence for the CLI ---------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"name": self.name, "subnet": self.subnet, "bridge": self.bridge,
                "namespaces": list(self.namespaces), "pids": list(self.pids),
                "workdir": str(self.workdir) if self.workdir else None,
                "fake_vms": [vars(f) for f in self.fake_vms]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NetNode:
        node = cls(name=state["name"], subnet=state["subnet"], bridge=state["bridge"],
                   iperf_server=False)
        node.namespaces = list(state["namespaces"])
        node.pids = list(state["pids"])
        node.workdir = Path(state["workdir"]) if state.get("workdir") else None
        node.fake_vms = [FakeVM(**f) for f in state.get("fake_vms", [])]
        return node


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 style."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))

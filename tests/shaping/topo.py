"""A throwaway shaping node in network namespaces: uplink, bridge, fake VMs, KVM dir.

node netns: bridge ``br0`` with the uplink ``up0`` (a veth whose peer sits in the
"world" netns, 192.0.2.1) and one veth per fake VM NIC: its bridge side plays the tap
(Ganeti's taps are bridge ports too), its other end is ``eth0`` in the VM's own netns
(192.0.2.10+). ``kvm_dir/nic/<instance>/<index>`` names the taps, as Ganeti's KVM
runtime dir does. Everything is torn down by ``close()`` even after a failure.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_COUNTER = itertools.count()


def sh(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(args), input=input, capture_output=True, text=True,
                          check=False, timeout=120)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Node:
    base: Path
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}{next(_COUNTER)}")
    vms: dict[str, str] = field(default_factory=dict)  # tap -> vm netns
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ns = f"hps-n{self.tag}"
        self.world = f"hps-w{self.tag}"
        self.kvm_dir = self.base / "kvm"
        (self.kvm_dir / "nic").mkdir(parents=True, exist_ok=True)
        for ns in (self.ns, self.world):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
        sh("ip", "netns", "exec", self.world, "sysctl", "-q", "-w",
           "net.ipv6.conf.default.disable_ipv6=1")
        self.ip("link", "add", "br0", "type", "bridge")
        self.ip("link", "add", "up0", "type", "veth", "peer", "name", "wo0", "netns", self.world)
        self.ip("link", "set", "up0", "master", "br0")
        for dev in ("br0", "up0", "lo"):
            self.ip("link", "set", dev, "up")
        sh("ip", "-n", self.world, "addr", "add", "192.0.2.1/24", "dev", "wo0")
        sh("ip", "-n", self.world, "link", "set", "wo0", "up")
        sh("ip", "-n", self.world, "link", "set", "lo", "up")
        self.sysctl("net.bridge.bridge-nf-call-iptables", "1", check=False)
        self.sysctl("net.bridge.bridge-nf-call-ip6tables", "1", check=False)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.ns, *args)

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.ns, *args, input=input, check=check)

    def sysctl(self, key: str, value: str, check: bool = True) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}", check=check)

    def add_tap(self, tap: str, *, vm: bool = False) -> None:
        """A bridge port named ``tap``; with ``vm`` its peer is eth0 in a VM netns."""
        if vm:
            vmns = f"hps-v{self.tag}-{len(self.vms)}"
            sh("ip", "netns", "add", vmns)
            self.namespaces.append(vmns)
            # no IPv6 autoconf chatter: per-class packet counts stay exact
            sh("ip", "netns", "exec", vmns, "sysctl", "-q", "-w",
               "net.ipv6.conf.default.disable_ipv6=1")
            self.ip("link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", vmns)
            sh("ip", "-n", vmns, "addr", "add", f"192.0.2.{10 + len(self.vms)}/24", "dev", "eth0")
            sh("ip", "-n", vmns, "link", "set", "eth0", "up")
            sh("ip", "-n", vmns, "link", "set", "lo", "up")
            self.vms[tap] = vmns
        else:
            self.ip("tuntap", "add", "dev", tap, "mode", "tap")
        self.ip("link", "set", tap, "master", "br0")
        self.ip("link", "set", tap, "up")

    def add_taps_batch(self, taps: list[str]) -> None:
        """Many tuntap bridge ports at once (ip -batch)."""
        lines = []
        for tap in taps:
            lines += [f"tuntap add dev {tap} mode tap", f"link set {tap} master br0",
                      f"link set {tap} up"]
        sh("ip", "-n", self.ns, "-batch", "-", input="\n".join(lines) + "\n")

    def del_link(self, tap: str) -> None:
        self.ip("link", "del", tap)

    def nic(self, instance: str, index: int, tap: str | None) -> None:
        """Write (or with tap None remove) Ganeti's nic/<instance>/<index> file."""
        d = self.kvm_dir / "nic" / instance
        if tap is None:
            (d / str(index)).unlink(missing_ok=True)
            if d.exists() and not any(d.iterdir()):
                d.rmdir()
            return
        d.mkdir(parents=True, exist_ok=True)
        (d / str(index)).write_text(tap + "\n")

    def tc_json(self, *args: str) -> list[dict]:
        import json

        return json.loads(self.run("tc", "-j", *args) or "[]")

    def iptables_save(self, family: int = 4) -> str:
        return self.run("iptables-save" if family == 4 else "ip6tables-save", "-t", "mangle")

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

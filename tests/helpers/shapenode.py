"""hookpack's shaping driven through its CLI on a vmtestbed NetNode (bridge, uplink, fake VMs).

A fake VM's bridge-side veth (``fvmN``) plays the instance's tap: Ganeti's KVM
runtime dir ``kvm_dir/nic/<instance>/<index>`` names it, as ``kvm-ifup`` leaves it.
Per-instance rates are given as the instance's last known tags
(``state_dir/shaping/tags/<instance>``, what the hook stores), so ``hookpack
shaping apply --all`` builds the same state a hook run would.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from vmtestbed.netnode import FakeVM, NetNode
from vmtestbed.shapemeter import class_bytes


class HookpackNode:
    def __init__(self, node: NetNode, base: Path, classifier: str, default_rate: str = "1gbit",
                 ipv6: bool = True, kvm_dir: Path | None = None) -> None:
        self.node = node
        self.base = base
        self.kvm_dir = kvm_dir or base / "kvm"
        self.state_dir = base / "state"
        (self.kvm_dir / "nic").mkdir(parents=True, exist_ok=True)
        self.config = base / "hookpack.toml"
        self.config.write_text(
            '[log]\nsyslog = false\n\n[node]\nfqdn = "node1.example.test"\n\n[paths]\n'
            f'kvm_dir = "{self.kvm_dir}"\nstate_dir = "{self.state_dir}"\n'
            f'run_dir = "{base / "run"}"\nhooks_dir = "{base / "hooks"}"\n\n'
            f'[shaping]\nenabled = true\nuplink = "uplink"\nclassifier = "{classifier}"\n'
            f'egress_rate = "{default_rate}"\ningress_rate = "{default_rate}"\n'
            f"ipv6 = {'true' if ipv6 else 'false'}\n")
        self.config.chmod(0o600)
        # no br_netfilter sysctls: the tap marks need none (issue 16)

    def add_vm(self, instance: str | None, egress: str | None = None,
               ingress: str | None = None) -> FakeVM:
        """A fake VM; with ``instance`` it is that instance's NIC 0 (shaped), else unshaped."""
        vm = self.node.add_fake_vm()
        if instance:
            d = self.kvm_dir / "nic" / instance
            d.mkdir(parents=True, exist_ok=True)
            (d / "0").write_text(vm.host_ifname + "\n")
            self.set_rates(instance, egress, ingress)
        return vm

    def set_rates(self, instance: str, egress: str | None, ingress: str | None) -> None:
        """The instance's last known ``hookpack:egress=``/``ingress=`` tags."""
        tags = [f"hookpack:{k}={v}" for k, v in (("egress", egress), ("ingress", ingress)) if v]
        tagdir = self.state_dir / "shaping" / "tags"
        tagdir.mkdir(parents=True, exist_ok=True)
        (tagdir / instance).write_text(json.dumps(sorted(tags)) + "\n")

    def cli(self, *args: str, check: bool = True) -> dict:
        proc = self.node.exec([sys.executable, "-m", "hookpack", "shaping", *args, "--json",
                               "--config", str(self.config)], check=check, timeout=120)
        return json.loads(proc.stdout) if proc.stdout.strip() else {}

    def apply(self) -> dict:
        return self.cli("apply", "--all")

    def class_bytes(self, dev: str = "uplink") -> dict[str, int]:
        return class_bytes(self.node.exec(["tc", "-s", "class", "show", "dev", dev]).stdout)

    def marks(self) -> dict[str, dict[str, object]]:
        """hookpack's netdev table read back with ``nft``: chain -> device, mark, comment."""
        from tests.shaping.conftest import parse_nft

        out = self.node.exec(["nft", "list", "table", "netdev", "hookpack"], check=False)
        return parse_nft(out.stdout)

    def fw_filters(self, dev: str = "uplink") -> set[tuple[str, str]]:
        """(handle/mask, classid) of the fw filters on dev, read with tc (text: iproute2
        6.1's ``tc -j filter show`` prints invalid JSON for fw)."""
        shown = self.node.exec(["tc", "filter", "show", "dev", dev]).stdout
        return set(re.findall(r" fw chain \d+ handle (0x[0-9a-f]+(?:/0x[0-9a-f]+)?) "
                              r"classid ([0-9a-f]+:[0-9a-f]+)", shown))

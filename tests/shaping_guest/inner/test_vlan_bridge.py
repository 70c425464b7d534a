"""Ganeti's `bridged` mode with `vlan=` on a VLAN-aware bridge, on the stock kernel.

The development kernel has no VLAN filtering, so this runs only in the guest. Like
Ganeti's kvm-ifup for `vlan=100`, the tap is an untagged port of VLAN 100 (pvid) on a
bridge with ``vlan_filtering 1`` and the uplink a tagged member: the VM's frames leave
the node with an 802.1Q tag the bridge adds. hookpack marks them at the tap, before
the bridge; the flood is measured where it leaves the uplink, beside an unshaped VM
in the same VLAN in the same run.
"""

from __future__ import annotations

import os

import pytest

from tests.shaping.conftest import Shaper
from tests.shaping.flood import flood_rate

pytestmark = [pytest.mark.netns]

LIMIT = float(os.environ.get("HP_FLOOD_LIMIT", "10"))  # Mbit/s; the guest run sets 1
BOUND = LIMIT * 1.05
ESCAPE = float(os.environ.get("HP_FLOOD_ESCAPE", "40"))  # an unshaped flood beats this


@pytest.fixture
def shaper(tmp_path):
    s = Shaper(tmp_path)
    yield s
    s.close()


def _vlan_port(s: Shaper, tap: str) -> None:
    s.node.run("bridge", "vlan", "del", "dev", tap, "vid", "1")
    s.node.run("bridge", "vlan", "add", "dev", tap, "vid", "100", "pvid", "untagged")


@pytest.mark.parametrize("kind", ["raw", "vlan"])
def test_vlan_aware_bridge_holds_a_flood_to_its_class(shaper, kind):
    s = shaper
    s.write_config(classifier="auto", egress_rate=f"{LIMIT:g}mbit", ingress_rate="1gbit")
    s.node.ip("link", "set", "br0", "type", "bridge", "vlan_filtering", "1")
    s.node.run("bridge", "vlan", "add", "dev", "up0", "vid", "100")  # tagged trunk
    for tap in ("tap0", "tapx"):
        s.node.add_tap(tap, vm=True)
        _vlan_port(s, tap)
    s.node.nic("tenant.example.test", 0, "tap0")
    out = s.cli("apply", "--all")
    assert not out["failures"], out
    assert "mark -> class: cls_bpf" in out["classifier"], out
    assert "vlan_filtering 1" in s.node.run("ip", "-d", "link", "show", "br0")
    free = flood_rate(s.node.vms["tapx"], s.node.world, kind)
    shaped = flood_rate(s.node.vms["tap0"], s.node.world, kind)
    print(f"\nVLAN-aware bridge, flood {kind}: unshaped VM {free:.1f} Mbit/s, VM in a "
          f"{LIMIT:g} Mbit class {shaped:.2f} Mbit/s")
    assert free > ESCAPE, f"unshaped {kind} flood only {free:.1f} Mbit/s"
    assert shaped <= BOUND, f"{kind} flood escaped its class: {shaped:.2f} Mbit/s"
    assert shaped >= LIMIT * 0.5

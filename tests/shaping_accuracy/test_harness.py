"""The measuring method itself, checked against a hand-made HTB (plain tc, no hookpack).

If these fail, the accuracy tests of hookpack's shaping would measure noise.
"""

from __future__ import annotations

import pytest
from vmtestbed.netnode import NetNode
from vmtestbed.shapemeter import Flow, measure, measure_until_within

pytestmark = [pytest.mark.netns, pytest.mark.slow]

RATE = 100  # Mbit/s


def _hand_htb(node: NetNode, ifname: str, rate: int, src: str | None) -> None:
    """HTB on ifname: class 1:10 at rate; with src, only that source goes to 1:10 (u32)."""
    default = "99" if src else "10"
    node.exec(["tc", "qdisc", "add", "dev", ifname, "root", "handle", "1:", "htb",
               "default", default])
    node.exec(["tc", "class", "add", "dev", ifname, "parent", "1:", "classid", "1:10", "htb",
               "rate", f"{rate}mbit", "ceil", f"{rate}mbit"])
    if src:
        node.exec(["tc", "class", "add", "dev", ifname, "parent", "1:", "classid", "1:99",
                   "htb", "rate", "100gbit"])
        node.exec(["tc", "filter", "add", "dev", ifname, "parent", "1:", "protocol", "ip",
                   "prio", "1", "u32", "match", "ip", "src", f"{src}/32", "flowid", "1:10"])


@pytest.mark.parametrize("direction", ["from-vm", "to-vm"])
def test_hand_made_htb_measures_within_5_percent(node, servers, record, direction):
    vm = node.add_fake_vm()
    if direction == "from-vm":  # the uplink's egress, the VM's traffic picked by source
        _hand_htb(node, "uplink", RATE, vm.ip.split("/")[0])
    else:  # the VM port's egress (a tap's, for a real VM)
        _hand_htb(node, vm.host_ifname, RATE, None)
    flow = Flow(vm.netns, node.upstream_ip, servers.ports[0], reverse=direction == "to-vm",
                label=direction)
    history = measure_until_within([flow], [RATE], attempts=3, seconds=6)
    attempts = [h[0] for h in history]
    record(f"hand-htb {direction}", RATE, attempts)
    assert abs(attempts[-1].wire - RATE) <= 0.05 * RATE, [str(m) for m in attempts]


def test_unshaped_path_is_far_faster_than_the_rates_under_test(node, servers, record):
    """Without a shaper the veth/bridge path must not itself be the limit at 500 Mbit."""
    vm = node.add_fake_vm()
    up, down = measure([Flow(vm.netns, node.upstream_ip, servers.ports[0], False, "up"),
                        Flow(vm.netns, node.upstream_ip, servers.ports[1], True, "down")],
                       seconds=5)
    record("unshaped up+down at once", None, [up, down])
    assert up.wire > 2 * 500 and down.wire > 2 * 500, (str(up), str(down))

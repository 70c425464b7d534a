"""The kernel mechanism hookpack's fw mode relies on, with plain iptables + tc.

MARK in mangle FORWARD by physdev-in (br_netfilter), an HTB on the uplink, one
``fw`` filter per mark; traffic of each fake VM must land in its own class. This
proves the datapath on the stock kernel independently of hookpack's code.
"""

from __future__ import annotations

import re

import pytest
from vmtestbed.shapemeter import Flow, class_bytes, measure

pytestmark = [pytest.mark.netns]


def _class_bytes(node, dev):
    return class_bytes(node.exec(["tc", "-s", "class", "show", "dev", dev]).stdout)


def test_marked_traffic_lands_in_its_fw_class(node, servers):
    vms = [node.add_fake_vm(), node.add_fake_vm()]
    node.exec(["tc", "qdisc", "add", "dev", "uplink", "root", "handle", "1:", "htb",
               "default", "1"])
    node.exec(["tc", "class", "add", "dev", "uplink", "parent", "1:", "classid", "1:1", "htb",
               "rate", "10gbit"])
    for i, vm in enumerate(vms):
        mark = 0x10 + i
        node.exec(["tc", "class", "add", "dev", "uplink", "parent", "1:", "classid",
                   f"1:{mark:x}", "htb", "rate", "50mbit", "ceil", "50mbit"])
        node.exec(["tc", "filter", "add", "dev", "uplink", "parent", "1:", "protocol", "all",
                   "prio", "1", "handle", f"0x{mark:x}/0xffff", "fw", "classid", f"1:{mark:x}"])
        node.exec(["iptables", "-w", "-t", "mangle", "-A", "FORWARD", "-m", "physdev",
                   "--physdev-in", vm.host_ifname, "-j", "MARK", "--set-xmark",
                   f"0x{mark:x}/0xffff"])
    # (iproute2 6.1's "tc -j filter show" prints invalid JSON for fw filters: read the text)
    shown = node.exec(["tc", "filter", "show", "dev", "uplink", "parent", "1:"]).stdout
    fw = set(re.findall(r" fw chain 0 handle (0x[0-9a-f]+/0xffff) classid (1:[0-9a-f]+)", shown))
    assert fw == {("0x10/0xffff", "1:10"), ("0x11/0xffff", "1:11")}, shown

    for i, vm in enumerate(vms):
        before = _class_bytes(node, "uplink")
        (m,) = measure([Flow(vm.netns, node.upstream_ip, servers.ports[0], False, f"vm{i}")],
                       seconds=2, omit=0)
        after = _class_bytes(node, "uplink")
        delta = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        mine, other = f"1:{0x10 + i:x}", f"1:{0x11 - i:x}"
        sent = m.goodput * 1e6 / 8 * m.seconds
        print(f"vm{i}: {m}; class byte deltas {delta}")
        assert delta[mine] >= 0.9 * sent, delta
        assert delta[other] < 0.01 * delta[mine], delta
        assert delta["1:1"] < 0.01 * delta[mine], delta


def test_u32_mark_match_is_kept_on_this_kernel(node, servers):
    """CONFIG_CLS_U32_MARK=y here: an unmarked flow must NOT match a u32 mark filter."""
    vm = node.add_fake_vm()
    node.exec(["tc", "qdisc", "add", "dev", "uplink", "root", "handle", "1:", "htb",
               "default", "1"])
    for minor, rate in (("1", "10gbit"), ("20", "50mbit")):
        node.exec(["tc", "class", "add", "dev", "uplink", "parent", "1:", "classid",
                   f"1:{minor}", "htb", "rate", rate])
    node.exec(["tc", "filter", "add", "dev", "uplink", "parent", "1:", "protocol", "ip", "prio",
               "2", "u32", "match", "mark", "0x20", "0xffff", "flowid", "1:20"])
    shown = node.exec(["tc", "filter", "show", "dev", "uplink", "parent", "1:"]).stdout
    assert re.search(r"^\s+mark 0x0020 0xffff", shown, re.MULTILINE), shown
    before = _class_bytes(node, "uplink")
    measure([Flow(vm.netns, node.upstream_ip, servers.ports[0], False, "unmarked")],
            seconds=2, omit=0)
    after = _class_bytes(node, "uplink")
    assert after["1:20"] - before.get("1:20", 0) == 0, (before, after)
    assert after["1:1"] - before.get("1:1", 0) > 100_000, (before, after)

"""The network node: bridge, uplink, upstream sink, Ganeti-style taps, fake VMs."""

import json
import os
import re

import pytest
from vmtestbed.iperf import measure

pytestmark = pytest.mark.netns


def _link(netnode, name):
    out = netnode.exec(["ip", "-d", "-j", "link", "show", "dev", name]).stdout
    return json.loads(out)[0]


def test_node_layout_and_fake_vm_reach_upstream(netnode):
    fvm = netnode.add_fake_vm()
    assert _link(netnode, "uplink")["master"] == netnode.bridge
    assert _link(netnode, fvm.host_ifname)["master"] == netnode.bridge
    fvm.run(["busybox", "ping", "-c", "1", "-W", "2", netnode.upstream_ip])
    listening = netnode.upstream_exec(["ss", "-Hltn"]).stdout
    assert f"{netnode.upstream_ip}:5201" in listening


def test_tap_is_created_the_ganeti_way(netnode):
    name, fd = netnode.create_tap()
    try:
        assert re.fullmatch(r"tap\d+", name)
        link = _link(netnode, name)
        assert link["master"] == netnode.bridge
        assert link["linkinfo"]["info_kind"] == "tun"
        # IFF_TAP|IFF_NO_PI|IFF_ONE_QUEUE|IFF_VNET_HDR, as Ganeti's OpenTap sets them
        flags = int(netnode.exec(["cat", f"/sys/class/net/{name}/tun_flags"]).stdout, 16)
        assert flags & 0x7002 == 0x7002
    finally:
        os.close(fd)
    # the tap lives only as long as an fd is open
    assert netnode.exec(["ip", "link", "show", "dev", name], check=False).returncode != 0


@pytest.mark.slow
def test_fake_vm_throughput_to_upstream(netnode, record_property):
    fvm = netnode.add_fake_vm()
    up = measure(fvm.check_output, netnode.upstream_ip, seconds=2)
    down = measure(fvm.check_output, netnode.upstream_ip, seconds=2, reverse=True)
    record_property("fakevm_up_mbit", round(up))
    record_property("fakevm_down_mbit", round(down))
    print(f"fake VM -> upstream {up:.0f} Mbit/s, upstream -> fake VM {down:.0f} Mbit/s")
    assert up > 500 and down > 500

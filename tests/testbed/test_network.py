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
    udp = measure(fvm.check_output, netnode.upstream_ip, seconds=2, udp_mbit=40)
    record_property("fakevm_udp40_mbit", round(udp, 1))
    assert 30 < udp < 42


@pytest.mark.slow
def test_concurrent_flows_on_their_own_sink_ports(netnode):
    from concurrent.futures import ThreadPoolExecutor

    port = netnode.start_iperf_server(5202)
    a, b = netnode.add_fake_vm(), netnode.add_fake_vm()
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(measure, a.check_output, netnode.upstream_ip, 2)
        fb = pool.submit(measure, b.check_output, netnode.upstream_ip, 2, port=port)
        assert fa.result() > 100 and fb.result() > 100


def _shape(netnode, ifname, mbit):
    """HTB on the bridge port's egress: limits traffic towards the VM behind it."""
    netnode.exec(["tc", "qdisc", "replace", "dev", ifname, "root", "handle", "1:", "htb",
                  "default", "10"])
    netnode.exec(["tc", "class", "replace", "dev", ifname, "parent", "1:", "classid", "1:10",
                  "htb", "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit"])


@pytest.mark.slow
def test_htb_on_a_fake_vm_port_limits_its_download(netnode):
    fvm = netnode.add_fake_vm()
    _shape(netnode, fvm.host_ifname, 20)
    tcp = measure(fvm.check_output, netnode.upstream_ip, seconds=3, reverse=True)
    udp = measure(fvm.check_output, netnode.upstream_ip, seconds=3, reverse=True, udp_mbit=60)
    print(f"shaped to 20 Mbit/s: tcp {tcp:.1f}, udp {udp:.1f} Mbit/s")
    assert 15 < tcp < 21.5 and 15 < udp < 21.5

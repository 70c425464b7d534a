"""Inside the guest: a node netns (bridge, uplink, upstream iperf3 servers), fake VMs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from vmtestbed.netnode import NetNode
from vmtestbed.shapemeter import IperfServers

PORTS = (5301, 5302)


@pytest.fixture
def node() -> Iterator[NetNode]:
    with NetNode(iperf_server=False) as n:
        # bridged frames through iptables (per netns since Linux 5.3)
        n.exec(["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])
        yield n


@pytest.fixture
def servers(node: NetNode) -> Iterator[IperfServers]:
    assert node.workdir is not None
    with IperfServers(node.upstream_netns, node.upstream_ip, PORTS, node.workdir) as s:
        yield s

"""Accuracy tests: iperf3 TCP through a node's bridge and uplink (vmtestbed.shapemeter).

Every number measured is printed and appended to ``bench/results/shapeproof.jsonl``
(gitignored) so a report can quote all of them, retries included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vmtestbed.netnode import NetNode
from vmtestbed.pytest_plugin import boot_guest, guest_image, kvmnode, netnode
from vmtestbed.shapemeter import IperfServers, Measurement

# the testbed's fixtures, for the real-guest test
__all__ = ["boot_guest", "guest_image", "kvmnode", "netnode"]

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "shapeproof.jsonl"
PORTS = (5301, 5302, 5303)

Record = Callable[..., None]


@pytest.fixture
def node() -> Iterator[NetNode]:
    with NetNode(iperf_server=False) as n:
        yield n


@pytest.fixture
def servers(node: NetNode) -> Iterator[IperfServers]:
    assert node.workdir is not None
    with IperfServers(node.upstream_netns, node.upstream_ip, PORTS, node.workdir) as s:
        yield s


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    def rec(case: str, configured: float | None, attempts: list[Measurement], **extra: object
            ) -> None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "test": request.node.nodeid, "case": case, "configured_mbit": configured,
               "wire_mbit": [round(m.wire, 2) for m in attempts],
               "goodput_mbit": [round(m.goodput, 2) for m in attempts],
               "retransmits": [m.retransmits for m in attempts], **extra}
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        ratio = "" if not configured else \
            " (" + ", ".join(f"{m.wire / configured:.3f}" for m in attempts) + " of configured)"
        print(f"\n{case}: configured {configured} Mbit/s, wire {row['wire_mbit']}, "
              f"goodput {row['goodput_mbit']}{ratio}")
    return rec

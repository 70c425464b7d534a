"""The u32-mark trap, on the host kernel (built without CONFIG_CLS_U32_MARK).

Runs on the host: its kernel accepts ``u32 match mark`` and silently drops the
mark match, so the filter takes every packet. This test shows the trap is real
here (unmarked traffic lands in the u32 filter's class) and that hookpack's probe
reports it and hookpack does not classify with u32 (it falls back to CLASSIFY).
Inside the guest (CONFIG_CLS_U32_MARK=y) inner/ checks the opposite: kept.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from vmtestbed.netnode import NetNode
from vmtestbed.shapemeter import Flow, IperfServers, class_bytes, measure

from tests.helpers.shapenode import HookpackNode

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _host_config() -> str:
    try:
        return gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return ""


@pytest.mark.skipif("CONFIG_CLS_U32_MARK=y" in _host_config() or not _host_config(),
                    reason="this kernel has the u32 mark match (or no /proc/config.gz): "
                           "no trap to show")
def test_u32_mark_filter_matches_everything_here_and_hookpack_avoids_it(tmp_path):
    with NetNode(iperf_server=False) as node:
        assert node.workdir is not None
        vm = node.add_fake_vm()
        node.exec(["tc", "qdisc", "add", "dev", "uplink", "root", "handle", "1:", "htb",
                   "default", "1"])
        for minor in ("1", "20"):
            node.exec(["tc", "class", "add", "dev", "uplink", "parent", "1:", "classid",
                       f"1:{minor}", "htb", "rate", "10gbit"])
        proc = node.exec(["tc", "filter", "add", "dev", "uplink", "parent", "1:", "protocol",
                          "ip", "prio", "2", "u32", "match", "mark", "0x20", "0xffff",
                          "flowid", "1:20"])
        assert proc.returncode == 0  # accepted...
        shown = node.exec(["tc", "filter", "show", "dev", "uplink"]).stdout
        assert "mark 0x" not in shown, shown  # ...but stored without its mark match
        with IperfServers(node.upstream_netns, node.upstream_ip, [5301], node.workdir) as s:
            before = class_bytes(node.exec(["tc", "-s", "class", "show", "dev",
                                            "uplink"]).stdout)
            measure([Flow(vm.netns, node.upstream_ip, s.ports[0], False, "unmarked")],
                    seconds=2, omit=0)
        after = class_bytes(node.exec(["tc", "-s", "class", "show", "dev", "uplink"]).stdout)
        # nothing carries mark 0x20, yet the u32 "mark" filter took the traffic
        assert after["1:20"] - before.get("1:20", 0) > 1_000_000, (before, after)
        node.exec(["tc", "qdisc", "del", "dev", "uplink", "root"])

        shaper = HookpackNode(node, tmp_path, "auto")
        facts = shaper.cli("doctor", "--refresh")
        assert facts["u32_mark"].startswith("dropped"), facts
        # hookpack marks at the tap and classifies with cls_bpf (this kernel has no cls_fw)
        assert "cls_bpf" in facts["classifier"], facts
        shaper.add_vm("vm-a.example.test", "8mbit", "8mbit")
        report = shaper.apply()
        assert not report["failures"], report
        filters = node.exec(["tc", "filter", "show", "dev", "uplink"]).stdout
        assert " u32 " not in filters and " fw " not in filters, filters
        assert " bpf " in filters, filters

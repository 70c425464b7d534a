"""The uplink's class tree, leaf qdiscs, per-instance limits and 64-bit rates, against
real kernel objects in network namespaces (root). Read back independently with ``tc``
and pyroute2, never only through hookpack's own parser.
"""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.netns

INST = "multi.example.test"


def _leaves(s, dev: str) -> dict[str, dict]:
    """parent class -> leaf qdisc (``tc -j qdisc show``; HTB's default pfifo is absent)."""
    return {q["parent"]: q for q in s.node.tc_json("qdisc", "show", "dev", dev)
            if not q.get("root")}


def test_leaf_is_reconciled_in_place_and_only_when_different(shaper):
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap)
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    s.write_config(leaf_qdisc="bfifo")  # a kind both kernels have, limit shown by tc
    first = s.cli("apply", "--all")
    assert not first["failures"], first
    before = _leaves(s, "up0")
    assert {p: q["options"]["limit"] for p, q in before.items()} == {
        "4850:2": 12_500_000, "4850:10": 12500, "4850:11": 12500}
    # a longer fifo: every leaf is changed in place (same handle), nothing else written
    s.write_config(leaf_qdisc="bfifo", leaf_delay_ms=20)
    out = s.cli("apply", "--all")
    assert out["writes"] == {"netlink": 5, "nf_tables": 0}, out  # 3 uplink + 2 tap leaves
    after = _leaves(s, "up0")
    assert {p: q["handle"] for p, q in after.items()} == \
        {p: q["handle"] for p, q in before.items()}
    assert after["4850:10"]["options"]["limit"] == 25000
    assert _leaves(s, "tap0")["4850:1"]["options"]["limit"] == 50000  # 20mbit, 20 ms
    again = s.cli("apply", "--all")
    assert again["writes"] == {"netlink": 0, "nf_tables": 0}
    # someone replaces a leaf by hand: the next run puts the bounded one back
    s.node.run("tc", "qdisc", "replace", "dev", "up0", "parent", "4850:10", "pfifo",
               "limit", "1000")
    fixed = s.cli("apply", "a.example.test")
    assert fixed["writes"]["netlink"] == 1
    assert _leaves(s, "up0")["4850:10"]["kind"] == "bfifo"
    # leaf_qdisc = "default": HTB's own pfifo again (not dumped: no leaf listed)
    s.write_config(leaf_qdisc="default")
    back = s.cli("apply", "--all")
    assert not back["failures"] and back["writes"]["netlink"] == 5, back
    assert _leaves(s, "up0") == {} and _leaves(s, "tap0") == {}
    assert s.cli("apply", "--all")["writes"]["netlink"] == 0


def test_fq_codel_forced_on_a_kernel_without_it_fails_cleanly(shaper):
    s = shaper()
    s.node.add_tap("tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.write_config(leaf_qdisc="auto")
    code, out, err = s.cli_raw("doctor")
    assert code == 0
    facts = dict(re.findall(r"^(\S+) +(.*)$", out, re.M))
    has_fq_codel = facts["sch_fq_codel"] == "True"
    assert facts["leaf_qdisc"].startswith("fq_codel" if has_fq_codel else "tbf")
    if has_fq_codel:  # the stock kernel (shaping_guest runs this suite there)
        return
    s.write_config(leaf_qdisc="fq_codel")
    code, out, err = s.cli_raw("apply", "--all")
    assert code == 1 and "Traceback" not in out + err
    assert "leaf for tap0" in err and "No such file or directory" in err, err


def test_host_class_is_the_default_under_the_root(shaper):
    s = shaper()
    s.node.add_tap("tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.write_config(uplink_rate="1gbit", host_rate="300mbit", guaranteed_rate="2mbit")
    assert not s.cli("apply", "--all")["failures"]
    c = s.classes()
    assert (c["4850:1"]["rate"], c["4850:1"]["ceil"]) == (10**9 // 8, 10**9 // 8)
    assert (c["4850:2"]["rate"], c["4850:2"]["ceil"]) == (300 * 10**6 // 8, 10**9 // 8)
    assert (c["4850:10"]["rate"], c["4850:10"]["ceil"]) == (2 * 10**6 // 8, 10**7 // 8)
    assert c["4850:2"]["parent"] == c["4850:10"]["parent"] == "4850:1"
    text = s.node.run("tc", "class", "show", "dev", "up0")
    assert re.search(r"class htb 4850:2 parent 4850:1 leaf \S+ prio 0 ", text), text
    assert re.search(r"class htb 4850:10 parent 4850:1 leaf \S+ prio 0 ", text), text
    assert s.node.tc_json("qdisc", "show", "dev", "up0")[0]["options"]["default"] == "0x2"


def test_old_layout_is_rebuilt_by_one_instance_hook(shaper):
    """An uplink qdisc of the previous release (default class 1 at the root, tap classes
    beside it) is rebuilt with the root and host classes, for every instance, by the
    next instance-scoped run."""
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap)
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    s.cli("apply", "--all")
    s.node.run("tc", "qdisc", "del", "dev", "up0", "root")
    s.node.run("tc", "-batch", "-", input=(
        "qdisc add dev up0 root handle 4850: htb default 1\n"
        "class add dev up0 parent 4850: classid 4850:1 htb rate 10gbit\n"
        "class add dev up0 parent 4850: classid 4850:10 htb rate 10mbit\n"
        "class add dev up0 parent 4850: classid 4850:11 htb rate 10mbit\n"))
    out = s.cli("apply", "a.example.test")
    assert not out["failures"], out
    assert any("rebuilt" in c for c in out["changes"]), out["changes"]
    c = s.classes()
    assert set(c) == {"4850:1", "4850:2", "4850:10", "4850:11"}
    assert {c[h]["parent"] for h in ("4850:2", "4850:10", "4850:11")} == {"4850:1"}
    assert s.cli("apply", "--all")["writes"] == {"netlink": 0, "nf_tables": 0}


def test_per_instance_limit_tag_and_back(shaper):
    s = shaper()
    for tap in ("tap0", "tap1", "tap2"):
        s.node.add_tap(tap)
    s.node.nic(INST, 0, "tap0")
    s.node.nic(INST, 1, "tap1")
    s.node.nic("other.example.test", 0, "tap2")
    tags = s.base / "state" / "shaping" / "tags"
    tags.mkdir(parents=True)
    (tags / INST).write_text(json.dumps(["hookpack:egress-scope:instance",
                                         "hookpack:egress:8mbit"]) + "\n")
    out = s.cli("apply", "--all")
    assert not out["failures"], out
    c = s.classes()
    parent = "4850:8010"  # the instance's lowest tap minor (0x10) | 0x8000
    assert c[parent]["parent"] == "4850:1" and c[parent]["ceil"] == 1_000_000
    for nic in ("4850:10", "4850:11"):  # each NIC: half the guarantee, the instance's limit
        assert c[nic]["parent"] == parent and c[nic]["ceil"] == 1_000_000
        assert c[nic]["rate"] == 1_000_000 // 8 // 2
    assert c["4850:12"]["parent"] == "4850:1"  # the other instance: per NIC (the default)
    assert parent not in _leaves(s, "up0")  # an inner class has no leaf
    assert s.cli("apply", INST)["writes"] == {"netlink": 0, "nf_tables": 0}
    # the tag goes away: the NIC classes move back under the root, the parent is deleted
    (tags / INST).write_text(json.dumps(["hookpack:egress:8mbit"]) + "\n")
    out = s.cli("apply", INST)
    assert not out["failures"], out
    c = s.classes()
    assert parent not in c
    assert c["4850:10"]["parent"] == c["4850:11"]["parent"] == "4850:1"
    assert c["4850:10"]["ceil"] == 1_000_000 and "4850:10" in _leaves(s, "up0")
    assert s.cli("apply", "--all")["writes"] == {"netlink": 0, "nf_tables": 0}


def test_config_per_instance_cannot_be_widened_by_a_tag(shaper):
    s = shaper()
    for tap in ("tap0", "tap1"):
        s.node.add_tap(tap)
    s.node.nic(INST, 0, "tap0")
    s.node.nic(INST, 1, "tap1")
    s.write_config(egress_scope="instance")
    tags = s.base / "state" / "shaping" / "tags"
    tags.mkdir(parents=True)
    (tags / INST).write_text(json.dumps(["hookpack:egress-scope:nic"]) + "\n")
    out = s.cli("apply", "--all")
    assert any("cannot widen" in n for n in out["notes"]), out["notes"]
    assert s.classes()["4850:10"]["parent"] == "4850:8010"


@pytest.mark.parametrize("rate,bits", [("40gbit", 40 * 10**9), ("100gbit", 10**11)])
def test_rates_above_34_gbit_read_back_from_the_kernel(shaper, rate, bits):
    """Above 2^32 bytes/s (34.36 Gbit/s) HTB takes TCA_HTB_RATE64/CEIL64: written by
    hookpack, read back by pyroute2 and by tc."""
    s = shaper()
    s.node.add_tap("tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.write_config(uplink_rate="400gbit", host_rate="36gbit", egress_rate=rate,
                   guaranteed_rate=rate, ingress_rate=rate)
    out = s.cli("apply", "--all")
    assert not out["failures"], out
    c = s.classes()  # pyroute2
    assert bits // 8 > 2**32
    assert c["4850:10"]["rate"] == c["4850:10"]["ceil"] == bits // 8
    assert c["4850:1"]["ceil"] == 400 * 10**9 // 8
    assert c["4850:2"]["rate"] == 36 * 10**9 // 8
    assert s.classes("tap0")["4850:1"]["rate"] == bits // 8
    text = s.node.run("tc", "class", "show", "dev", "up0")
    gbit = f"{bits // 10**9}Gbit"
    assert re.search(rf"class htb 4850:10 .*rate {gbit} ceil {gbit}", text), text
    assert re.search(r"class htb 4850:1 root .*rate 400Gbit ceil 400Gbit", text), text
    assert s.cli("apply", "--all")["writes"] == {"netlink": 0, "nf_tables": 0}

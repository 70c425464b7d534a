"""hookpack shaping on Debian's stock kernel (inside the guest): the probe, and the fw
mark -> class mapping (cls_fw; ``auto`` picks cls_bpf there too).

The host kernel has no cls_fw, so this is the only place hookpack's fw mode meets
a real cls_fw: probe, filters written and read back, real traffic per class. The
marks come from hookpack's nf_tables netdev chains in both modes.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from vmtestbed.shapemeter import Flow, measure

from tests.helpers.shapenode import HookpackNode

pytestmark = [pytest.mark.netns]


FW = "mark -> class: cls_fw "


def test_doctor_probes_bpf_fw_netdev_and_u32_mark_kept(node, tmp_path):
    shaper = HookpackNode(node, tmp_path, "auto")
    facts = shaper.cli("doctor", "--refresh")
    assert facts["cls_fw"] is True and facts["cls_bpf"] is True, facts
    assert facts["nft_netdev"] is True and facts["htb"] is True, facts
    # Debian's kernel has CONFIG_CLS_U32_MARK=y: the probe must see the mark match kept
    assert facts["u32_mark"] == "kept", facts
    assert "mark -> class: cls_bpf (cls_bpf present" in facts["classifier"], facts


def test_fw_each_vm_lands_in_its_own_class(node, servers, tmp_path):
    shaper = HookpackNode(node, tmp_path, "fw")
    vms = [shaper.add_vm("vm-a.example.test", "8mbit", "8mbit"),
           shaper.add_vm("vm-b.example.test", "12mbit", "12mbit")]
    report = shaper.apply()
    assert not report["failures"], report
    assert FW in report["classifier"], report
    filters = shaper.fw_filters("uplink")
    classes = {c for _, c in filters}
    assert len(filters) == 2 and len(classes) == 2, filters
    marks = {tap: m["mark"] for tap, m in shaper.marks().items()}
    assert set(marks) == {vm.host_ifname for vm in vms}, marks
    # each tap's mark has its own fw filter
    by_mark = {int(h.split("/")[0], 16): c for h, c in filters}
    assert set(marks.values()) == set(by_mark), (marks, filters)
    # hookpack reads its state back: show lists each NIC by mark, nothing pending
    shown = shaper.cli("show")
    assert FW in shown["classifier"], shown
    assert sorted(r["mark"] for r in shown["taps"]) == sorted(
        f"{m:#x}" for m in marks.values()), shown
    assert {r["egress"] for r in shown["taps"]} == {"8mbit", "12mbit"}, shown
    assert shown["pending_changes"] == [], shown
    # a second apply changes nothing
    again = shaper.apply()
    assert again["changes"] == [] and again["writes"]["netlink"] == 0, again

    for vm in vms:
        mine = by_mark[marks[vm.host_ifname]]
        before = shaper.class_bytes("uplink")
        (m,) = measure([Flow(vm.netns, node.upstream_ip, servers.ports[0], False, vm.netns)],
                       seconds=3, omit=0)
        after = shaper.class_bytes("uplink")
        delta = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        print(f"{vm.host_ifname} -> {mine}: {m}; class byte deltas {delta}")
        sent = m.goodput * 1e6 / 8 * m.seconds
        assert delta[mine] >= 0.9 * sent, delta
        # 4850:1 is the root class: its counters add up its children's
        others = sum(v for c, v in delta.items() if c not in (mine, "4850:1"))
        assert others < 0.01 * delta[mine], delta


def test_forced_fw_on_this_kernel_applies(node, tmp_path):
    shaper = HookpackNode(node, tmp_path, "fw")
    shaper.add_vm("vm-a.example.test", "8mbit", "8mbit")
    report = shaper.apply()
    assert not report["failures"], report
    assert FW in report["classifier"], report
    assert len(shaper.fw_filters("uplink")) == 1


def test_hotplugged_nic_adds_one_fw_filter_and_leaves_the_rest(node, tmp_path):
    shaper = HookpackNode(node, tmp_path, "fw")
    shaper.add_vm("vm-a.example.test", "8mbit", "8mbit")
    assert not shaper.apply()["failures"]
    before = shaper.fw_filters("uplink")
    vm = node.add_fake_vm()  # NIC 1 of vm-a appears (hotplug)
    (shaper.kvm_dir / "nic" / "vm-a.example.test" / "1").write_text(vm.host_ifname + "\n")
    out = shaper.apply()
    assert not out["failures"], out
    # uplink class + leaf + fw filter, tap qdisc + class + leaf; one nf_tables batch
    assert out["writes"] == {"netlink": 6, "nf_tables": 1}, out
    after = shaper.fw_filters("uplink")
    assert before < after and len(after - before) == 1, (before, after)


def test_fw_lifecycle_stop_clear_then_boot_apply(node, tmp_path):
    """fw mode's own lifecycle, on the only kernel here with cls_fw: a stopped instance
    loses its fw filter, class and mark and the other instance keeps its own; ``clear
    --all`` leaves no filter, mark or uplink qdisc; the boot unit's ``apply --all`` shapes
    the remaining instance again, its fw filter on its (new) mark. The rest of the
    lifecycle does not depend on the classifier and runs on the host
    (tests/shaping/test_shaping_netns.py)."""
    shaper = HookpackNode(node, tmp_path, "fw")
    a = shaper.add_vm("vm-a.example.test", "8mbit", "8mbit")
    b = shaper.add_vm("vm-b.example.test", "12mbit", "12mbit")
    assert not shaper.apply()["failures"]
    filters, marks = shaper.fw_filters("uplink"), shaper.marks()
    by_mark = {int(h.split("/")[0], 16): c for h, c in filters}
    class_a = by_mark[marks[a.host_ifname]["mark"]]
    classes = set(shaper.class_bytes())
    assert class_a in classes, (class_a, classes)
    # stopped as Ganeti stops it: its nic/ files removed, its tap destroyed
    shutil.rmtree(shaper.kvm_dir / "nic" / "vm-a.example.test")
    node.exec(["ip", "link", "del", a.host_ifname])
    out = shaper.cli("apply", "vm-a.example.test")
    assert not out["failures"], out
    assert set(shaper.marks()) == {b.host_ifname}
    left = shaper.fw_filters("uplink")
    assert left == {f for f in filters if f[1] != class_a} and len(left) == 1, (filters, left)
    assert set(shaper.class_bytes()) == classes - {class_a}
    out = shaper.cli("clear", "--all", "--yes")
    assert not out["failures"], out
    assert shaper.fw_filters("uplink") == set() and shaper.marks() == {}
    assert "htb" not in node.exec(["tc", "qdisc", "show", "dev", "uplink"]).stdout
    again = shaper.apply()
    assert not again["failures"], again
    # b alone now: it may get the first free mark, and its fw filter names that mark
    marks_now = shaper.marks()
    assert set(marks_now) == {b.host_ifname}, marks_now
    ((handle, classid),) = shaper.fw_filters("uplink")
    assert int(handle.split("/")[0], 16) == marks_now[b.host_ifname]["mark"], handle
    assert classid in shaper.class_bytes(), classid


def test_hookpack_doctor_passes_cls_fw_present_and_htb(node, tmp_path):
    """`hookpack doctor`'s shaping checks on the stock kernel."""
    shaper = HookpackNode(node, tmp_path, "auto")
    proc = node.exec([sys.executable, "-m", "hookpack", "doctor", "--json", "--config",
                      str(shaper.config)], check=False, timeout=120)
    checks = {c["name"]: c for c in json.loads(proc.stdout) if c["name"].startswith("shaping")}
    classifier = checks["shaping classifier"]
    assert classifier["status"] == "pass", checks
    assert classifier["message"].startswith(
        "marks: nf_tables netdev ingress chain per tap; mark -> class: cls_bpf"), checks
    assert classifier["message"].endswith("u32 mark match: kept"), checks
    assert checks["shaping htb"]["status"] == "pass", checks
    assert checks["shaping marks"]["status"] == "pass", checks
    assert "shaping br_netfilter" not in checks

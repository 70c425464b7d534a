"""Shaping against real kernel objects in network namespaces (root).

Frames are marked per tap by nf_tables netdev chains; on the uplink one cls_bpf
program maps mark -> class (this kernel has no cls_fw; the fw path runs in the stock
Debian kernel guest, tests/shaping_guest). Objects are read back with ``nft`` and
``tc``/pyroute2. Traffic is sent only inside the namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLES as _SAMPLES
from tests.conftest import load_sample

# tests/conftest.py looks for the samples next to the checkout's parent; in a worktree
# layout (/work/wt/<branch>) they live in /work/shared.
SAMPLES = next((p for p in (_SAMPLES, Path("/work/shared/reference/ganeti-env-samples"))
                if p.is_dir()), _SAMPLES)

pytestmark = pytest.mark.netns


def _tc_classes(s, dev: str) -> list[dict]:
    """``tc class show`` as text (iproute2 6.1 prints HTB classes so under -j):
    handle and parent per class."""
    out = []
    for line in s.node.run("tc", "class", "show", "dev", dev).splitlines():
        words = line.split()
        if len(words) > 3 and words[0] == "class":
            row = {"handle": words[2]}
            if words[3] == "parent":
                row["parent"] = words[4]
            out.append(row)
    return out


def _setup(s, *vm_taps: str) -> None:
    for tap in vm_taps:
        s.node.add_tap(tap, vm=True)


def test_apply_creates_exactly_the_desired_objects(shaper):
    s = shaper()
    _setup(s, "tap0", "tap1")
    s.node.add_tap("tap5")
    s.node.nic("web1.example.test", 0, "tap0")
    s.node.nic("web1.example.test", 1, "tap5")
    s.node.nic("db1.example.test", 0, "tap1")
    out = s.cli("apply", "--all")
    assert not out["failures"]
    classes = s.classes()
    assert set(classes) == {"4850:1", "4850:2", "4850:10", "4850:11", "4850:12"}
    # root class at uplink_rate (default 10gbit), host class guaranteed uplink_rate/10
    assert classes["4850:1"]["rate"] == classes["4850:1"]["ceil"] == 10**10 // 8
    assert classes["4850:2"]["rate"] == 10**9 // 8 and classes["4850:2"]["ceil"] == 10**10 // 8
    for handle in ("4850:10", "4850:11", "4850:12"):
        c = classes[handle]  # guaranteed 1mbit, limited to the 10mbit of the config
        assert c["rate"] == 1_000_000 // 8 and c["ceil"] == 10_000_000 // 8
        assert c["burst"] == 1500 and c["cburst"] == 12500 and c["quantum"] == 1506
    parents = {c["handle"]: c.get("parent") for c in _tc_classes(s, "up0")}
    assert parents["4850:1"] is None  # the root
    assert {parents[h] for h in ("4850:2", "4850:10", "4850:11", "4850:12")} == {"4850:1"}
    qdiscs = {q["dev"]: q for q in s.node.tc_json("qdisc", "show") if q.get("root")}
    assert qdiscs["up0"]["kind"] == "htb" and qdiscs["up0"]["handle"] == "4850:"
    assert qdiscs["up0"]["options"]["default"] == "0x2"
    # every leaf class has a bounded leaf: fq_codel where the kernel has it, else (this
    # kernel) a segmenting tbf at 1 Tbit/s over a fifo of 10 ms at the class's ceil
    leaves = s.leaves("up0")
    kind = leaves["4850:2"]["kind"]
    assert kind in ("fq_codel", "tbf")
    assert set(leaves) == {"4850:2", "4850:10", "4850:11", "4850:12"}  # not under 4850:1
    if kind == "tbf":
        assert leaves["4850:2"]["limit"] == 10**10 // 8 // 100
        for handle in ("4850:10", "4850:11", "4850:12"):
            assert leaves[handle]["kind"] == "tbf" and leaves[handle]["limit"] == 12500
        tc_rates = {q["parent"]: q["options"]["rate"]
                    for q in s.node.tc_json("qdisc", "show", "dev", "up0") if q["kind"] == "tbf"}
        assert set(tc_rates.values()) == {10**12 // 8}  # 64-bit: TCA_TBF_RATE64
    for tap in ("tap0", "tap1", "tap5"):  # to-VM: 20mbit -> 25000 bytes
        tap_leaf = s.leaves(tap)["4850:1"]
        assert tap_leaf["kind"] == kind
        assert kind == "fq_codel" or tap_leaf["limit"] == 25000
    for tap in ("tap0", "tap1", "tap5"):
        assert qdiscs[tap]["kind"] == "htb"
        tap_classes = s.classes(tap)
        assert list(tap_classes) == ["4850:1"] and tap_classes["4850:1"]["rate"] == 20_000_000 // 8
    assert qdiscs["br0"]["kind"] == "noqueue"  # the bridge is never touched
    marks = s.marks()
    assert marks == {
        "tap0": {"device": "tap0", "jump": "mark/tap0",
                 "mark": 0x10, "comment": "hookpack:web1.example.test:0",
                 "rules": 1},
        "tap5": {"device": "tap5", "jump": "mark/tap5",
                 "mark": 0x12, "comment": "hookpack:web1.example.test:1",
                 "rules": 1},
        "tap1": {"device": "tap1", "jump": "mark/tap1",
                 "mark": 0x11, "comment": "hookpack:db1.example.test:0",
                 "rules": 1}}
    assert s.rules(4) == [] and s.rules(6) == []  # no iptables, no br_netfilter needed
    # one classifier on the uplink: a cls_bpf program (no fw, no u32)
    (line,) = s.filters()
    assert " bpf " in line and "pref 4850" in line and "bytecode" in line, line


def test_second_apply_makes_zero_kernel_writes(shaper):
    s = shaper()
    _setup(s, "tap0", "tap1")
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    first = s.cli("apply", "--all")
    assert first["writes"]["netlink"] > 0 and first["writes"]["nf_tables"] == 1
    again = s.cli("apply", "--all")
    assert again["changes"] == []
    assert again["writes"] == {"netlink": 0, "nf_tables": 0}
    one = s.cli("apply", "a.example.test")
    assert one["writes"] == {"netlink": 0, "nf_tables": 0} and not one["whole_node"]


def test_changing_one_instance_touches_only_its_objects(shaper):
    s = _a_and_b_shaped(shaper())
    before = s.classes()
    marks_before = s.marks()
    # NIC hotplug on b: a second tap
    s.node.add_tap("tap2")
    s.node.nic("b.example.test", 1, "tap2")
    out = s.cli("apply", "b.example.test")
    # exactly: class + leaf on the uplink, qdisc + class + leaf on the new tap; one
    # nf_tables batch
    assert out["writes"] == {"netlink": 5, "nf_tables": 1}
    after = s.classes()
    for handle in ("4850:1", "4850:2", "4850:10", "4850:11"):  # existing classes intact
        counters = ("bytes", "packets")
        assert {k: v for k, v in after[handle].items() if k not in counters} == \
            {k: v for k, v in before[handle].items() if k not in counters}
    assert set(after) == set(before) | {"4850:12"}
    marks = s.marks()
    assert {t: marks[t] for t in marks_before} == marks_before
    assert marks["tap2"]["mark"] == 0x12 and marks["tap2"]["device"] == "tap2"


def _a_and_b_shaped(s):
    """Instances a (tap0, class 4850:10) and b (tap1, 4850:11), shaped."""
    _setup(s, "tap0", "tap1")
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    s.cli("apply", "--all")
    return s


def _stop_a(s) -> None:
    """What Ganeti does when it stops a: QEMU gone, tap destroyed, nic/ files removed."""
    s.node.nic("a.example.test", 0, None)
    s.node.del_link("tap0")


def test_stop_removes_the_instance_and_nothing_else(shaper):
    s = _a_and_b_shaped(shaper())
    _stop_a(s)
    out = s.cli("apply", "a.example.test")
    assert not out["failures"]
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:11"}
    assert set(s.marks()) == {"tap1"}
    # a stopped instance whose tap still exists loses its to-VM qdisc too
    s.node.nic("b.example.test", 0, None)
    s.cli("apply", "b.example.test")
    assert s.node.tc_json("qdisc", "show", "dev", "tap1")[0]["kind"] != "htb"
    assert set(s.classes()) == {"4850:1", "4850:2"}


def test_stop_finds_the_class_when_the_kernel_took_the_tap_chain(shaper):
    """Linux before 6.16 (Debian 12's 6.1) deletes a tap's netdev base chain with the
    tap; 6.16 and later keep it. Done here by hand as 6.1 does: the record chain
    mark/<tap> still names the class, and the stop hook removes it."""
    s = _a_and_b_shaped(shaper())
    _stop_a(s)
    if "chain tap0 " in s.node.run("nft", "list", "table", "netdev", "hookpack"):
        s.node.run("nft", "delete", "chain", "netdev", "hookpack", "tap0")
    assert s.marks()["tap0"]["device"] is None and s.marks()["tap0"]["mark"] == 0x10
    out = s.cli("apply", "a.example.test")
    assert not out["failures"], out
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:11"}
    assert set(s.marks()) == {"tap1"}


def test_marks_of_the_single_chain_layout_are_taken_over(shaper):
    """A node shaped by a hookpack that set the mark in the tap's base chain itself:
    the mark is read from there (the class stays), the chain is rewritten to the jump."""
    s = shaper()
    _setup(s, "tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.cli("apply", "--all")
    s.node.run("nft", "-f", "-", input=(
        "flush chain netdev hookpack tap0\n"
        "delete chain netdev hookpack mark/tap0\n"
        "add rule netdev hookpack tap0 meta mark set meta mark & 0xffff0000 | 0x10 "
        'comment "hookpack:a.example.test:0"\n'))
    old = s.marks()["tap0"]
    assert (old["jump"], old["mark"], old["rules"]) == (None, 0x10, 1), old
    plan = s.cli("plan", "a.example.test")
    assert any("mark 0x10" in c for c in plan["changes"]), plan
    s.cli("apply", "a.example.test")
    assert s.marks()["tap0"] == {"device": "tap0", "jump": "mark/tap0", "mark": 0x10,
                                 "comment": "hookpack:a.example.test:0", "rules": 1}
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:10"}
    assert s.cli("plan", "--all")["changes"] == []


def test_two_taps_with_one_mark_are_split(shaper):
    """Two NICs marked alike would share one class (one tenant inside another's limit):
    the reconcile gives the second its own mark and class."""
    s = _a_and_b_shaped(shaper())
    s.node.run("nft", "-f", "-", input=(
        "flush chain netdev hookpack mark/tap1\n"
        "add rule netdev hookpack mark/tap1 meta mark set meta mark & 0xffff0000 | 0x10 "
        'comment "hookpack:b.example.test:0"\n'))
    assert s.marks()["tap1"]["mark"] == s.marks()["tap0"]["mark"] == 0x10
    out = s.cli("apply", "b.example.test")
    assert not out["failures"], out
    marks = s.marks()
    assert marks["tap0"]["mark"] == 0x10 and marks["tap1"]["mark"] not in (None, 0x10), marks
    assert f"4850:{marks['tap1']['mark']:x}" in s.classes()
    assert s.cli("plan", "--all")["changes"] == []


def test_instance_not_running_here_writes_nothing(shaper):
    s = shaper()
    # a secondary, or the master: no nic/ files for the instance, nothing shaped yet
    out = s.cli("apply", "gone.example.test")
    assert out["changes"] == [] and out["writes"] == {"netlink": 0, "nf_tables": 0}
    assert s.node.tc_json("qdisc", "show", "dev", "up0")[0]["kind"] == "noqueue"
    # ... and a foreign uplink qdisc is no reason to fail there
    s.node.run("tc", "qdisc", "add", "dev", "up0", "root", "handle", "7:", "pfifo")
    code, _out, err = s.cli_raw("apply", "gone.example.test")
    assert code == 0, err


def test_foreign_qdiscs_and_rules_survive(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.node.add_tap("tap9")  # not an instance's tap: its admin-made qdisc must stay
    s.node.run("tc", "qdisc", "add", "dev", "tap9", "root", "handle", "9:", "pfifo")
    s.node.run("iptables-restore", "--noflush", input=(
        "*mangle\n:OTHER - [0:0]\n-A PREROUTING -j OTHER\n"
        "-A FORWARD -m comment --comment admin -j MARK --set-xmark 0x4000/0x4000\n"
        "-A OTHER -j RETURN\nCOMMIT\n"))
    s.node.run("nft", "-f", "-", input=(
        "table netdev admin {\n chain in9 { type filter hook ingress device tap9 priority 0;"
        " counter; }\n}\n"))
    s.node.nic("a.example.test", 0, "tap0")
    s.cli("apply", "--all")
    assert set(s.marks()) == {"tap0"}
    s.cli("clear", "--all", "--yes")
    assert "chain in9" in s.node.run("nft", "list", "table", "netdev", "admin")
    assert s.marks() == {}
    save = s.node.iptables_save()
    assert "-A PREROUTING -j OTHER" in save and "-A OTHER -j RETURN" in save
    assert "--comment admin" in save and "HOOKPACK" not in save
    assert s.node.tc_json("qdisc", "show", "dev", "tap9")[0]["handle"] == "9:"
    assert s.node.tc_json("qdisc", "show", "dev", "up0")[0]["kind"] == "noqueue"


def test_foreign_root_qdisc_on_the_uplink_is_refused(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.node.run("tc", "qdisc", "add", "dev", "up0", "root", "handle", "7:", "pfifo")
    code, out, err = s.cli_raw("apply", "--all")
    assert code == 1
    assert "hookpack did not create" in err and "Traceback" not in err + out
    assert s.node.tc_json("qdisc", "show", "dev", "up0")[0]["handle"] == "7:"
    assert s.marks() == {}


def test_vanished_tap_is_skipped_with_a_note(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("a.example.test", 1, "tapgone")
    out = s.cli("apply", "--all")
    assert not out["failures"]
    assert any("tapgone" in n and "skipped" in n for n in out["notes"])
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:10"}


def test_forcing_fw_where_cls_fw_is_missing_fails_cleanly(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.node.nic("a.example.test", 0, "tap0")
    s.write_config(classifier="fw")
    code, out, err = s.cli_raw("apply", "--all")
    assert code == 1
    assert "fw filter for tap0" in err and "Traceback" not in err + out


def test_auto_classifier_probe_and_doctor(shaper):
    s = shaper()
    s.write_config(classifier="auto")
    code, out, _ = s.cli_raw("doctor")
    assert code == 0
    kernel_has_fw = "fw" in subprocess.run(["tc", "filter", "add", "help"], capture_output=True,
                                           text=True, check=False).stderr  # tc knows fw
    assert kernel_has_fw  # sanity: userspace knows the fw classifier
    # on this kernel (no cls_fw, no CLS_U32_MARK) the probe must say so
    facts = dict(line.split(None, 1) for line in out.splitlines() if line[:1].isalpha()
                 and not line.startswith("warning"))
    assert facts["cls_fw"] == "False" and facts["cls_bpf"] == "True"
    assert facts["nft_netdev"] == "True" and "trap" in facts["u32_mark"]
    assert facts["classifier"].startswith("marks: nf_tables netdev ingress chain per tap; "
                                          "mark -> class: cls_bpf (cls_bpf present")


def _udp_blast(ns: str, dst: str, count: int, size: int = 1000) -> None:
    code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x'*{size},('{dst}',9))\n")
    subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], check=True, timeout=60)


def test_marks_classify_real_traffic(shaper):
    s = shaper()
    _setup(s, "tap0", "tap1")
    s.node.add_tap("tapx", vm=True)  # an unshaped VM: must land in the default class
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    s.cli("apply", "--all")
    vm_a, _vm_b, vm_x = s.node.vms["tap0"], s.node.vms["tap1"], s.node.vms["tapx"]
    _udp_blast(vm_a, "192.0.2.1", 50)
    _udp_blast(vm_x, "192.0.2.1", 30)
    classes = s.classes()

    def sent(handle: str) -> tuple[int, int]:
        """bytes sent, packets sent + dropped (the bounded leaf drops part of a blast)"""
        return classes[handle]["bytes"], classes[handle]["packets"] + classes[handle]["drops"]
    a_bytes, a_pkts = sent("4850:10")
    assert a_pkts >= 50 and a_bytes >= 10 * 1000
    assert sent("4850:11")[1] == 0  # b sent nothing
    assert sent("4850:2")[1] >= 30  # unshaped VM (and ARP) in the host's (default) class
    # to-VM direction: world -> b passes tap1's own HTB class
    _udp_blast(s.node.world, "192.0.2.11", 40)
    assert s.classes("tap1")["4850:1"]["packets"] >= 40


def _hook_env(sample: str, **changes: str) -> dict[str, str]:
    environ, _node = load_sample(SAMPLES / f"{sample}.env")
    environ.update(changes)
    return environ


def test_hook_tags_lower_the_rate_and_are_capped(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.write_config(max_egress_rate="50mbit")
    s.node.nic("inst1.example.test", 0, "tap0")
    env = _hook_env("instance-start-post-node1",
                    GANETI_POST_INSTANCE_TAGS="hookpack:egress:5mbit hookpack:ingress:1mbit")
    code, err = s.hook(env)
    assert code == 0 and "shaping: inst1.example.test: changed" in err, err
    assert s.classes()["4850:10"]["ceil"] == 5_000_000 // 8
    assert s.classes("tap0")["4850:1"]["rate"] == 1_000_000 // 8
    # a user raising their own limit above the maximum gets the maximum
    env["GANETI_POST_INSTANCE_TAGS"] = "hookpack:egress=900mbit"
    code, err = s.hook(env)
    assert s.classes()["4850:10"]["ceil"] == 50_000_000 // 8
    assert "capped" in err
    # the last known tags are persisted: a reconcile with no hook environment keeps them
    s.cli("clear", "--all", "--yes")
    s.cli("apply", "--all")
    assert s.classes()["4850:10"]["ceil"] == 50_000_000 // 8
    # a malformed tag is ignored (default rate), never an error
    env["GANETI_POST_INSTANCE_TAGS"] = "hookpack:egress=lots"
    code, err = s.hook(env)
    assert code == 0 and "tag ignored" in err
    assert s.classes()["4850:10"]["ceil"] == 10_000_000 // 8


def test_migrate_source_drops_and_target_builds(shaper):
    src = shaper("node1.example.test", "src")
    dst = shaper("node2.example.test", "dst")
    inst = "inst2.example.test"
    src.node.add_tap("tap3")
    src.node.add_tap("tap4")
    src.node.nic(inst, 0, "tap3")
    src.node.nic("other.example.test", 0, "tap4")
    src.cli("apply", "--all")
    assert len(src.classes()) == 4
    # live migration: the target's QEMU got a new tap; the source's is gone
    dst.node.add_tap("tap0")
    dst.node.nic(inst, 0, "tap0")
    src.node.nic(inst, 0, None)
    src.node.del_link("tap3")
    for node, sample in ((src, "instance-migrate-post-node1"),
                         (dst, "instance-migrate-post-node2")):
        code, err = node.hook(_hook_env(sample))
        assert code == 0 and "shaping" in err and "failed" not in err, err
    assert set(src.classes()) == {"4850:1", "4850:2", "4850:11"}  # the other instance's
    assert set(src.marks()) == {"tap4"}
    assert set(dst.classes()) == {"4850:1", "4850:2", "4850:10"}
    assert dst.marks()["tap0"]["comment"] == f"hookpack:{inst}:0"
    assert dst.node.tc_json("qdisc", "show", "dev", "tap0")[0]["kind"] == "htb"


def test_clear_then_boot_apply_restores_everything(shaper):
    s = _a_and_b_shaped(shaper())
    classes, marks = s.classes(), s.marks()
    out = s.cli("clear", "--all", "--yes")
    assert not out["failures"] and s.marks() == {}
    assert "hookpack" not in s.node.run("nft", "list", "tables")
    assert s.node.tc_json("qdisc", "show", "dev", "up0")[0]["kind"] == "noqueue"
    s.cli("apply", "--all")
    assert set(s.classes()) == set(classes) and s.marks() == marks


def test_plan_writes_nothing_and_show_reports(shaper):
    s = shaper()
    _setup(s, "tap0")
    s.node.nic("a.example.test", 0, "tap0")
    plan = s.cli("plan", "--all")
    assert plan["changes"] and plan["writes"] == {"netlink": 0, "nf_tables": 0}
    assert s.marks() == {}
    s.cli("apply", "--all")
    show = s.cli("show")
    assert show["taps"][0]["tap"] == "tap0" and show["taps"][0]["egress"] == "10mbit"
    assert show["taps"][0]["marked"] and show["in_step"] and show["pending_changes"] == []
    # the chain flushed by hand: show says out of step, never "in step"
    s.node.run("nft", "flush", "chain", "netdev", "hookpack", "tap0")
    show = s.cli("show")
    assert not show["taps"][0]["marked"] and not show["in_step"]
    assert any("mark 0x10" in c for c in show["pending_changes"])


def test_cli_refuses_a_bad_instance_name(shaper):
    s = shaper()
    code, _out, err = s.cli_raw("apply", "../etc")
    assert code == 1 and "not a valid host name" in err


def test_uplink_missing_is_a_clean_failure(shaper):
    s = shaper()
    s.write_config(uplink="nosuch0")
    code, _out, err = s.cli_raw("apply", "--all")
    assert code == 1 and "nosuch0 does not exist" in err



def test_hookpack_doctor_shows_the_probe(shaper):
    s = shaper()
    s.write_config(classifier="auto")
    proc = subprocess.run(["ip", "netns", "exec", s.node.ns, sys.executable, "-m", "hookpack",
                           "doctor", "--config", str(s.config)], capture_output=True,
                          text=True, timeout=60, check=False)
    lines = [line for line in proc.stdout.splitlines() if "shaping" in line]
    assert any(line.startswith("PASS shaping classifier: marks: nf_tables netdev ingress "
                               "chain per tap; mark -> class: cls_bpf") for line in lines), \
        proc.stdout
    assert any(line.startswith("PASS shaping marks: nf_tables netdev") for line in lines)
    assert any("u32 mark match: dropped" in line for line in lines)
    assert any(line.startswith("PASS shaping uplink: up0") for line in lines)
    assert not any("br_netfilter" in line for line in lines)  # no longer a requirement


_MID_APPLY = """
import json, subprocess, sys
from pathlib import Path
from hookpack.action import Paths
from hookpack.actions.shaping.action import SETTINGS, _session
from hookpack.config import load_config
cfg = load_config(Path(sys.argv[1]), required=True)
settings, paths = cfg.section("shaping", SETTINGS), Paths.from_config(cfg)
with _session(settings, paths, lambda: 30.0) as (rec, _why):
    plan = rec.plan(None)
    subprocess.run(["ip", "link", "del", "tap1"], check=True)  # QEMU died meanwhile
    failures = rec.apply(plan)
print(json.dumps({"failures": failures, "notes": plan.notes}))
"""


def test_tap_vanishing_between_plan_and_apply_is_skipped(shaper):
    s = shaper()
    _setup(s, "tap0", "tap1")
    s.node.nic("a.example.test", 0, "tap0")
    s.node.nic("b.example.test", 0, "tap1")
    import json

    out = json.loads(s.node.run(sys.executable, "-c", _MID_APPLY, str(s.config)))
    assert out["failures"] == []
    assert any("tap1 vanished during the change: skipped" in n for n in out["notes"])
    assert s.classes("tap0")["4850:1"]["rate"] == 20_000_000 // 8
    # the next run (Ganeti removed the nic file with the instance) cleans up after it
    s.node.nic("b.example.test", 0, None)
    again = s.cli("apply", "--all")
    assert not again["failures"]
    assert set(s.classes()) == {"4850:1", "4850:2", "4850:10"}
    assert set(s.marks()) == {"tap0"}


def test_the_kernels_rule_dump_is_read_by_shape(shaper):
    """Of the kernel's own dump (its layout, not the request's), the first mark rule and
    the first jump rule are parsed in full and the others read from their shape, with
    what the full parse reads."""
    s = shaper()
    taps = [f"tap{i}" for i in range(4)]  # one name length: one shape each
    _setup(s, *taps)
    for i, tap in enumerate(taps):
        s.node.nic(f"vm{i}.example.test", 0, tap)
    assert not s.cli("apply", "--all")["failures"]
    code = """
import json
from hookpack.actions.shaping import nft
whole = nft._read_exprs
parsed = []
def counting(blob):
    parsed.append(blob)
    return whole(blob)
nft._read_exprs = counting
with nft.Nft() as n:
    marks = n.marks()
    raw = n._dump(nft.GETRULE, nft._str(nft.RULE_TABLE, nft.TABLE))
read = sorted((c, m.value, m.mask, m.jump) for c, ms in marks.items() for m in ms)
full = []
for msg in raw:
    a = nft.parse_attrs(msg, nft._NFGEN.size)
    full.append((nft._text(a[nft.RULE_CHAIN]), *whole(a[nft.RULE_EXPRESSIONS])))
print(json.dumps({"same": read == sorted(full), "parsed": len(parsed), "rules": len(raw),
                  "marks": sorted(v for _c, v, _m, _j in read if v is not None)}))
"""
    got = __import__("json").loads(s.node.run(sys.executable, "-c", code))
    assert got["rules"] == 8 and got["same"]
    assert len(got["marks"]) == 4
    assert got["parsed"] == 2  # one mark rule, one jump rule; the other six by shape

"""The shaping doctor checks on real kernel state, each in a network namespace.

What is real here: HTB, cls_bpf, the missing cls_fw, nf_tables netdev ingress chains,
the taps, the bridge, the uplink and its root qdisc. What is not: this kernel has HTB,
cls_bpf and netdev chains and no cls_fw, so "no HTB", "no netdev chains" and "no
cls_bpf, cls_fw present" are shown through the probe's cache file
(run_dir/shaping-classifier.json, the file a probe on such a kernel writes), and Open
vSwitch (no module on this kernel) is stood in for by a bridge with its datapath's
name; the real cls_fw-present probe runs in the stock-kernel guest (tests/shaping_guest).
"""

from __future__ import annotations

import json

import pytest

from hookpack.actions.shaping import classifier

pytestmark = pytest.mark.netns


def _cached_probe(doctor_ns, **result):
    """What a probe on another kernel would have cached for this boot of this kernel."""
    run_dir = doctor_ns.base / "run_dir"
    run_dir.mkdir(exist_ok=True)
    data = {"htb": True, "fw": False, "bpf": True, "u32_mark": "kept", "detail": "",
            "bpf_detail": "", "nft_netdev": True, "nft_detail": "",
            "kernel": classifier.kernel_key(), "version": classifier._VERSION, **result}
    (run_dir / "shaping-classifier.json").write_text(json.dumps(data))


def test_htb_probed_here_passes_and_a_kernel_without_htb_fails(doctor_ns):
    check = doctor_ns.doctor()["shaping htb"]
    assert check["status"] == "pass" and check["message"].endswith("(probed)")
    _cached_probe(doctor_ns, htb=False, u32_mark="unknown",
                  detail="htb: No such file or directory")
    check = doctor_ns.doctor()["shaping htb"]
    assert check["status"] == "fail"
    assert check["message"] == ("the kernel refused an HTB qdisc (htb: No such file or "
                                "directory)")
    assert "modprobe sch_htb" in check["fix"]


def test_marks_probed_here_pass_and_a_kernel_without_netdev_chains_fails(doctor_ns):
    check = doctor_ns.doctor()["shaping marks"]
    assert check["status"] == "pass"  # real: this kernel takes a netdev ingress chain
    assert check["message"].startswith("nf_tables netdev ingress chains (probed)")
    _cached_probe(doctor_ns, nft_netdev=False, nft_detail="Operation not supported")
    checks = doctor_ns.doctor()
    assert checks["shaping marks"]["status"] == "fail"
    assert checks["shaping marks"]["message"] == (
        "no nf_tables netdev ingress chain (Operation not supported): no VM frame can be "
        "classified")
    assert "modprobe nf_tables" in checks["shaping marks"]["fix"]
    assert "nf_tables netdev MISSING" in checks["shaping classifier"]["message"]


def test_classifier_cls_bpf_here_passes_forced_fw_fails_and_fw_fallback_passes(doctor_ns):
    doctor_ns.write_config('uplink = "up0"\nclassifier = "auto"\n')
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "pass"  # real: this kernel has cls_bpf
    assert check["message"].startswith("marks: nf_tables netdev ingress chain per tap; "
                                       "mark -> class: cls_bpf (cls_bpf present (probed)")
    doctor_ns.write_config('uplink = "up0"\nclassifier = "fw"\n')
    check = doctor_ns.doctor()["shaping classifier"]  # real: this kernel has no cls_fw
    assert check["status"] == "fail"
    assert check["message"] == "cls_fw: forced by shaping.classifier"
    assert check["fix"].startswith('set shaping.classifier = "auto"')
    doctor_ns.write_config('uplink = "up0"\nclassifier = "auto"\n')
    _cached_probe(doctor_ns, bpf=False, fw=True, bpf_detail="cls_bpf: No such file")
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "pass"
    assert "mark -> class: cls_fw (no usable cls_bpf (cls_bpf: No such file); cls_fw " \
        "present (probed))" in check["message"]
    _cached_probe(doctor_ns, bpf=False, fw=False, bpf_detail="cls_bpf: No such file")
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "fail"
    assert check["message"].startswith("cls_bpf: neither cls_bpf nor cls_fw usable")


def test_nic_modes_bridged_tap_passes_and_an_openvswitch_tap_warns(doctor_ns):
    """Open vSwitch has no module on this kernel: its datapath device (``ovs-system``,
    the master of every OVS port) is stood in for by a bridge of that name."""
    doctor_ns.ip("ip", "link", "add", "br0", "type", "bridge")
    doctor_ns.ip("ip", "tuntap", "add", "dev", "tapb", "mode", "tap")
    doctor_ns.ip("ip", "link", "set", "tapb", "master", "br0")
    nic_dir = doctor_ns.base / "kvm_dir" / "nic"
    (nic_dir / "b.example.test").mkdir(parents=True)
    (nic_dir / "b.example.test" / "0").write_text("tapb\n")
    check = doctor_ns.doctor()["shaping nic modes"]
    assert check["status"] == "pass" and check["message"].startswith("bridged (plain or ")
    doctor_ns.ip("ip", "link", "add", "ovs-system", "type", "bridge")
    doctor_ns.ip("ip", "tuntap", "add", "dev", "tapo", "mode", "tap")
    doctor_ns.ip("ip", "link", "set", "tapo", "master", "ovs-system")
    (nic_dir / "o.example.test").mkdir()
    (nic_dir / "o.example.test" / "0").write_text("tapo\n")
    check = doctor_ns.doctor()["shaping nic modes"]
    assert check["status"] == "warn"
    assert check["message"] == ("1 NIC(s) on Open vSwitch are not shaped: tapo "
                                "(o.example.test/0)")
    assert "bridged or routed" in check["fix"]


def test_uplink_unset_missing_or_foreign_qdisc_and_ours_to_take(doctor_ns):
    doctor_ns.write_config("")
    check = doctor_ns.doctor()["shaping uplink"]
    assert check["status"] == "fail" and check["message"] == "shaping.uplink is not set"
    doctor_ns.write_config('uplink = "nosuch0"\n')
    check = doctor_ns.doctor()["shaping uplink"]
    assert check["status"] == "fail" and check["message"] == "nosuch0 does not exist"
    doctor_ns.write_config()
    check = doctor_ns.doctor()["shaping uplink"]
    assert check["status"] == "pass" and check["message"].startswith("up0 root qdisc:")
    doctor_ns.ip("tc", "qdisc", "add", "dev", "up0", "root", "handle", "1:", "pfifo")
    check = doctor_ns.doctor()["shaping uplink"]
    assert check["status"] == "warn" and "(pfifo): shaping refuses" in check["message"]
    assert "replace_foreign_qdisc" in check["fix"]

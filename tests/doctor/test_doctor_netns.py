"""The shaping doctor checks on real kernel state, each in a network namespace.

What is real here: HTB, the missing cls_fw (so the CLASSIFY fallback), the per-netns
bridge-nf-call-iptables sysctl, rules loaded through iptables-legacy beside the host's
nf_tables backend, the uplink and its root qdisc. What is not: this kernel has HTB and
no cls_fw, so "no HTB" and "cls_fw present" are shown through the probe's cache file
(run_dir/shaping-classifier.json, the file a probe on such a kernel writes); the real
cls_fw-present probe runs in the stock-kernel guest (tests/shaping_guest, ~5 min).
"""

from __future__ import annotations

import json

import pytest

from hookpack.shaping import classifier

pytestmark = pytest.mark.netns


def test_bridge_nf_call_iptables_off_fails_and_on_passes(doctor_ns):
    doctor_ns.ip("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
    check = doctor_ns.doctor()["shaping br_netfilter"]
    assert check["status"] == "fail"
    assert "physdev rules cannot classify VM traffic" in check["message"]
    assert "net.bridge.bridge-nf-call-iptables=1" in check["fix"]
    doctor_ns.ip("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    check = doctor_ns.doctor()["shaping br_netfilter"]
    assert check["status"] == "pass" and check["message"] == "bridge-nf-call-iptables = 1"


def test_legacy_rules_beside_the_nft_backend_warn_and_a_matching_backend_passes(doctor_ns):
    clean = doctor_ns.doctor()["shaping iptables"]
    assert clean["status"] == "pass" and "nf_tables 0, legacy 0" in clean["message"]
    # the host's firewall, on the legacy backend, in this namespace
    doctor_ns.ip("iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    doctor_ns.ip("iptables-legacy", "-A", "INPUT", "-p", "tcp", "--dport", "80", "-j", "ACCEPT")
    check = doctor_ns.doctor()["shaping iptables"]
    assert check["status"] == "warn"
    assert "(nf_tables), but 2 rule(s) are loaded through legacy" in check["message"]
    assert 'shaping.iptables_backend = "legacy"' in check["fix"]
    doctor_ns.write_config('uplink = "up0"\niptables_backend = "legacy"\n')
    check = doctor_ns.doctor()["shaping iptables"]
    assert check["status"] == "pass" and "(legacy); rules in use" in check["message"]


def _cached_probe(doctor_ns, **result):
    """What a probe on another kernel would have cached for this boot of this kernel."""
    run_dir = doctor_ns.base / "run_dir"
    run_dir.mkdir(exist_ok=True)
    data = {"htb": True, "fw": False, "u32_mark": "kept", "detail": "",
            "kernel": classifier._kernel_key(), **result}
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


def test_classifier_falls_back_here_fails_when_fw_forced_passes_with_cls_fw(doctor_ns):
    doctor_ns.write_config('uplink = "up0"\nclassifier = "auto"\n')
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "pass"  # real: this kernel has no cls_fw
    assert check["message"].startswith("classify (no usable cls_fw")
    doctor_ns.write_config('uplink = "up0"\nclassifier = "fw"\n')
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "fail" and check["fix"] == 'set shaping.classifier = "auto"'
    doctor_ns.write_config('uplink = "up0"\nclassifier = "auto"\n')
    _cached_probe(doctor_ns, fw=True)
    check = doctor_ns.doctor()["shaping classifier"]
    assert check["status"] == "pass" and check["message"].startswith("fw (cls_fw present")


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

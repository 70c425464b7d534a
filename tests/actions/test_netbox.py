"""The netbox action and `netbox sync` against a REAL NetBox 4.7 (vmtestbed.netbox).

NetBox (PyPI's netbox wheel on Debian 13's Python, PostgreSQL and Redis) runs from a
cached root filesystem on loopback; the hooks run through the hooks-runner emulator
with environments derived from a recorded Ganeti one. What NetBox holds is read back
over its REST API with the standard library, not through pynetbox (which the action
uses). Every test works in a cluster of its own, so the tests share one server.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hookpack.action import NoRedact
from hookpack.actions.netbox.client import Writes, connect
from hookpack.actions.netbox.reconcile import NicSpec, VmSpec
from hookpack.actions.netbox.sync import spec_of_row, sync
from hookpack.emulator import run_hooks
from tests.helpers.entries import actions_entry
from tests.helpers.ganeti_env import instance_env
from tests.helpers.netbox_view import NetBoxView

pytestmark = [pytest.mark.netns, pytest.mark.slow]

NAME = "inst1.example.test"
MAC0, MAC1 = "AA:00:00:00:00:10", "AA:00:00:00:00:11"
_clusters = itertools.count(1)


@pytest.fixture
def nb(netbox_server):
    return NetBoxView(netbox_server, f"test-cluster-{next(_clusters)}")


@pytest.fixture
def token_file(tmp_path, netbox_server) -> Path:
    token = tmp_path / "netbox.token"
    token.write_text(netbox_server.token + "\n")
    token.chmod(0o600)
    return token


@pytest.fixture
def nb_hooks(nb, token_file, write_config, install_hooks, netbox_server):
    config = write_config(
        f'[node]\nfqdn = "node1.example.test"\n\n[netbox]\nenabled = true\n'
        f'url = "{netbox_server.url}"\ntoken_file = "{token_file}"\n'
        f'cluster = "{nb.cluster}"\ntimeout = 10.0\n')
    return install_hooks(config)


def hook(root: Path, hpath: str, name: str, ips: list[str], *,
         env: dict[str, str] | None = None, **kw: Any) -> str:
    """The netbox action's one log line; a post hook exits 0 even when the action fails."""
    full = {**instance_env(hpath, "post", name, ips, **kw), **(env or {})}
    [result] = actions_entry(run_hooks(root, hpath, "post", full))
    [line] = result.output.splitlines()
    assert result.status == "success", line
    return line


def test_add_creates_the_vm_with_interfaces_macs_ips_and_a_rerun_changes_nothing(
        nb, nb_hooks):
    line = hook(nb_hooks, "instance-add", NAME, ["198.51.100.21", "2001:db8::21"])
    assert line.startswith(f"hookpack netbox: {NAME}: changed: created VM {NAME}; "
                           f"created interface eth0; added MAC {MAC0} to eth0; "), line
    vm = nb.vm(NAME)
    assert vm is not None
    assert (vm["vcpus"], vm["memory"], vm["disk"], vm["status"]["value"]) == (
        1.0, 128, 64, "offline"), vm
    assert [t["slug"] for t in vm["tags"]] == ["hookpack"]
    assert vm["primary_ip4"]["address"] == "198.51.100.21/32"
    assert vm["primary_ip6"]["address"] == "2001:db8::21/128"
    ifaces = nb.interfaces(vm)
    assert sorted(ifaces) == ["eth0", "eth1"]
    assert {n: i["primary_mac_address"]["mac_address"] for n, i in ifaces.items()} == {
        "eth0": MAC0, "eth1": MAC1}
    assert nb.macs(vm) == {MAC0: "eth0", MAC1: "eth1"}
    assert nb.ips(vm) == {"198.51.100.21/32": "eth0", "2001:db8::21/128": "eth1"}
    again = hook(nb_hooks, "instance-add", NAME, ["198.51.100.21", "2001:db8::21"])
    assert again.startswith(f"hookpack netbox: {NAME}: nochange: virtual machine in step ("), \
        again


def test_modify_changes_ips_macs_size_and_nics(nb, nb_hooks):
    hook(nb_hooks, "instance-add", NAME, ["198.51.100.23", "198.51.100.33"])
    vm = nb.vm(NAME)
    old_mac_ids = {m["mac_address"]: m["id"] for m in
                   nb.get("dcim/mac-addresses", virtual_machine_id=vm["id"])}
    line = hook(nb_hooks, "instance-modify", NAME, ["198.51.100.23", "198.51.100.33"],
                after_ips=["198.51.100.24"],
                env={"GANETI_POST_INSTANCE_NIC0_MAC": "aa:00:00:00:00:99",
                     "GANETI_POST_INSTANCE_VCPUS": "2",
                     "GANETI_POST_INSTANCE_MEMORY": "256"})
    for part in ("updated VM inst1.example.test: memory, vcpus",
                 "added MAC AA:00:00:00:00:99 to eth0",
                 "added IP 198.51.100.24/32 to eth0",
                 "removed IP 198.51.100.23/32", "removed IP 198.51.100.33/32",
                 f"removed MAC {MAC0}", "removed interface eth1",
                 "set primary_ip4 of VM inst1.example.test"):
        assert part in line, (part, line)
    vm = nb.vm(NAME)
    assert (vm["vcpus"], vm["memory"]) == (2.0, 256)
    assert sorted(nb.interfaces(vm)) == ["eth0"]
    assert nb.ips(vm) == {"198.51.100.24/32": "eth0"}
    assert nb.macs(vm) == {"AA:00:00:00:00:99": "eth0"}
    assert nb.interfaces(vm)["eth0"]["primary_mac_address"]["mac_address"] == \
        "AA:00:00:00:00:99"
    assert vm["primary_ip4"]["address"] == "198.51.100.24/32"
    assert old_mac_ids[MAC0] not in {m["id"] for m in nb.get("dcim/mac-addresses",
                                                              mac_address=MAC0)}


def test_an_ip_moving_between_nics_is_moved_not_duplicated(nb, nb_hooks):
    hook(nb_hooks, "instance-add", NAME, ["198.51.100.41", "198.51.100.42"])
    before = {a: nb.ip(a)["id"] for a in ("198.51.100.41/32", "198.51.100.42/32")}
    line = hook(nb_hooks, "instance-modify", NAME, ["198.51.100.41", "198.51.100.42"],
                after_ips=["198.51.100.42", "198.51.100.41"])
    assert "moved IP 198.51.100.42/32 to eth0" in line and \
        "moved IP 198.51.100.41/32 to eth1" in line, line
    vm = nb.vm(NAME)
    assert nb.ips(vm) == {"198.51.100.42/32": "eth0", "198.51.100.41/32": "eth1"}
    assert {a: nb.ip(a)["id"] for a in before} == before  # the same objects
    assert vm["primary_ip4"]["address"] == "198.51.100.42/32"


def test_an_address_ipam_holds_is_taken_over_when_free_and_reported_when_not(nb, nb_hooks):
    free = nb.post("ipam/ip-addresses", address="198.51.100.51/24",
                   description="reserved by hand")
    other_vm = nb.post("virtualization/virtual-machines", name="other.example.test",
                       cluster=nb.cluster_id)
    other_if = nb.post("virtualization/interfaces", virtual_machine=other_vm["id"],
                       name="eth0")
    nb.post("ipam/ip-addresses", address="198.51.100.52/32",
            assigned_object_type="virtualization.vminterface",
            assigned_object_id=other_if["id"])
    line = hook(nb_hooks, "instance-add", NAME, ["198.51.100.51", "198.51.100.52"])
    assert ("assigned IP 198.51.100.51/24 (already in IPAM) to eth0" in line
            and "IP 198.51.100.52 is assigned in NetBox to VM other.example.test eth0: "
                "not added to eth1" in line), line
    vm = nb.vm(NAME)
    taken = nb.ip("198.51.100.51/24")
    assert (taken["id"], taken["description"]) == (free["id"], "reserved by hand")
    assert nb.ips(vm) == {"198.51.100.51/24": "eth0"}
    assert nb.ips(other_vm) == {"198.51.100.52/32": "eth0"}
    hook(nb_hooks, "instance-remove", NAME, [])
    kept = nb.ip("198.51.100.51/24")  # IPAM's own record outlives the instance
    assert kept["id"] == free["id"] and kept["assigned_object"] is None


def test_a_vm_of_the_same_name_in_another_cluster_is_never_touched(nb, nb_hooks,
                                                                   netbox_server):
    elsewhere = NetBoxView(netbox_server, f"test-cluster-{next(_clusters)}")
    theirs = elsewhere.post("virtualization/virtual-machines", name=NAME,
                            cluster=elsewhere.cluster_id, vcpus=8, status="active")
    hook(nb_hooks, "instance-add", NAME, ["198.51.100.61"])
    hook(nb_hooks, "instance-rename", NAME, ["198.51.100.61"], after_name="web1.example.test")
    hook(nb_hooks, "instance-remove", "web1.example.test", ["198.51.100.61"])
    assert nb.vm("web1.example.test") is None and nb.vm(NAME) is None
    same = elsewhere.vm(NAME)
    assert same is not None and same["id"] == theirs["id"]
    assert (same["vcpus"], same["status"]["value"]) == (8.0, "active")


def test_rename_keeps_the_vm_and_remove_keeps_what_operators_added(nb, nb_hooks):
    hook(nb_hooks, "instance-add", NAME, ["198.51.100.71", "198.51.100.72"])
    vm = nb.vm(NAME)
    ifaces = nb.interfaces(vm)
    # by hand: a second address on eth0, a MAC on eth1, a management interface with its IP
    extra = nb.post("ipam/ip-addresses", address="198.51.100.73/32",
                    assigned_object_type="virtualization.vminterface",
                    assigned_object_id=ifaces["eth0"]["id"], description="by hand")
    mac = nb.post("dcim/mac-addresses", mac_address="AA:BB:CC:00:00:01",
                  assigned_object_type="virtualization.vminterface",
                  assigned_object_id=ifaces["eth1"]["id"])
    mgmt = nb.post("virtualization/interfaces", virtual_machine=vm["id"], name="mgmt0")
    mgmt_ip = nb.post("ipam/ip-addresses", address="192.0.2.10/24",
                      assigned_object_type="virtualization.vminterface",
                      assigned_object_id=mgmt["id"])
    line = hook(nb_hooks, "instance-rename", NAME, ["198.51.100.71", "198.51.100.72"],
                after_name="web1.example.test")
    assert line.endswith(": changed: updated VM web1.example.test: name") or \
        ": changed: updated VM web1.example.test: name (" in line, line
    renamed = nb.vm("web1.example.test")
    assert renamed["id"] == vm["id"] and nb.vm(NAME) is None
    # the NIC with the operator's MAC goes: the MAC stays in NetBox, unassigned
    line = hook(nb_hooks, "instance-modify", "web1.example.test",
                ["198.51.100.71", "198.51.100.72"], after_ips=["198.51.100.71"])
    assert "unassigned MAC AA:BB:CC:00:00:01 (not hookpack's: kept)" in line, line
    assert nb.one("dcim/mac-addresses", id=mac["id"])["assigned_object"] is None
    line = hook(nb_hooks, "instance-remove", "web1.example.test", ["198.51.100.71"])
    assert "deleted VM web1.example.test" in line, line
    assert "unassigned IP 198.51.100.73/32 (not hookpack's: kept)" in line, line
    assert nb.vm("web1.example.test") is None
    assert nb.ip("198.51.100.71/32") is None and nb.ip("198.51.100.72/32") is None
    for kept in (extra, mgmt_ip):
        record = nb.one("ipam/ip-addresses", id=kept["id"])
        assert record is not None and record["assigned_object"] is None, record
    assert nb.one("ipam/ip-addresses", id=extra["id"])["description"] == "by hand"


def test_a_vm_hookpack_did_not_create_is_updated_but_never_deleted(nb, nb_hooks):
    hand = nb.post("virtualization/virtual-machines", name=NAME, cluster=nb.cluster_id,
                   vcpus=4, memory=4096, status="planned", comments="made by hand")
    nb.post("virtualization/interfaces", virtual_machine=hand["id"], name="mgmt0")
    line = hook(nb_hooks, "instance-add", NAME, ["198.51.100.81"])
    assert f"updated VM {NAME}: disk, memory, status, vcpus" in line, line
    nb.patch("virtualization/virtual-machines", hand["id"], status="active")
    line = hook(nb_hooks, "instance-remove", NAME, ["198.51.100.81"])
    assert "set VM inst1.example.test offline (not created by hookpack: kept)" in line, line
    vm = nb.vm(NAME)
    assert vm is not None and vm["status"]["value"] == "offline"
    assert vm["comments"] == "made by hand"
    assert "mgmt0" in nb.interfaces(vm)


def test_missing_cluster_is_a_clear_failure(nb, token_file, write_config, install_hooks,
                                           netbox_server):
    root = install_hooks(write_config(
        f'[node]\nfqdn = "node1.example.test"\n\n[netbox]\nenabled = true\n'
        f'url = "{netbox_server.url}"\ntoken_file = "{token_file}"\ncluster = "nope"\n'))
    line = hook(root, "instance-add", NAME, ["198.51.100.91"])
    assert ": failed: NetBox has no cluster named 'nope'" in line, line


def test_bad_token_is_refused_cleanly(nb, nb_hooks, token_file):
    token_file.write_text("0123456789abcdef0123456789abcdef01234567\n")
    line = hook(nb_hooks, "instance-add", NAME, ["198.51.100.92"])
    assert ": failed: NetBox refused cluster lookup: HTTP 403" in line, line
    assert "0123456789abcdef" not in line


def _sync_writes(netbox_server, token_file, dry_run: bool) -> Writes:
    settings = {"url": netbox_server.url, "token_file": str(token_file), "timeout": 10.0}
    return Writes(connect(settings, NoRedact(), 10.0), dry_run=dry_run)


SETTINGS = {"disk_unit": "MB", "interface_name": "eth{index}"}


def test_sync_dry_run_then_sync_then_nothing_and_gone_instances_removed(
        nb, netbox_server, token_file):
    hand = nb.post("virtualization/virtual-machines", name="hand.example.test",
                   cluster=nb.cluster_id)
    specs = {"a.example.test": spec_of_row(
        ["a.example.test", "up", "2", "512", "1024,2048", "aa:00:00:00:01:01",
         "198.51.100.101"]),
             "b.example.test": VmSpec("b.example.test", 1, 128, 64, False,
                                      (NicSpec(0, "AA:00:00:00:01:02", None),))}
    cluster_id = nb.cluster_id
    dry = _sync_writes(netbox_server, token_file, True)
    assert sync(dry, SETTINGS, specs, cluster_id, None) == []
    assert "created VM a.example.test" in dry.lines and \
        "added IP 198.51.100.101/32 to eth0" in dry.lines, dry.lines
    assert nb.vm("a.example.test") is None  # a dry run changes nothing
    done = _sync_writes(netbox_server, token_file, False)
    assert sync(done, SETTINGS, specs, cluster_id, None) == []
    assert done.lines[:len(dry.lines)] == dry.lines, (dry.lines, done.lines)
    a = nb.vm("a.example.test")
    assert (a["vcpus"], a["memory"], a["disk"], a["status"]["value"]) == (
        2.0, 512, 3072, "active")
    assert nb.ips(a) == {"198.51.100.101/32": "eth0"}
    again = _sync_writes(netbox_server, token_file, False)
    assert sync(again, SETTINGS, specs, cluster_id, None) == [] and again.lines == []
    gone = _sync_writes(netbox_server, token_file, False)
    assert sync(gone, SETTINGS, {"b.example.test": specs["b.example.test"]}, cluster_id,
                None) == []
    assert gone.lines == ["removed IP 198.51.100.101/32", "removed MAC AA:00:00:00:01:01",
                          "deleted VM a.example.test"], gone.lines
    assert nb.vm("a.example.test") is None and nb.ip("198.51.100.101/32") is None
    assert nb.vm("hand.example.test")["id"] == hand["id"]  # not hookpack's: left alone


def test_doctor_checks_token_reachability_and_cluster(nb, nb_hooks, token_file, tmp_path):
    config = tmp_path / "hookpack.toml"

    def doctor() -> list[str]:
        r = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config",
                            str(config)], capture_output=True, text=True, timeout=60)
        return [line for line in r.stdout.splitlines() if " netbox: " in line]

    assert doctor() == [f"PASS netbox: NetBox answers; cluster '{nb.cluster}' found"]
    config.write_text(config.read_text().replace(f'cluster = "{nb.cluster}"',
                                                 'cluster = "nope"'))
    assert doctor() == ["FAIL netbox: NetBox has no cluster named 'nope' -> create it in "
                        "NetBox or set [netbox] cluster"]
    token_file.chmod(0o644)
    [line] = doctor()
    assert line.startswith("FAIL netbox: ") and "chmod 600" in line


def test_policy_gate_asks_the_real_netbox_in_its_cluster(nb, netbox_server, token_file,
                                                        write_config, install_hooks,
                                                        tmp_path):
    """netbox_require_known: a name NetBox has in the cluster passes; one it has only in
    another cluster is vetoed like an unknown one."""
    elsewhere = NetBoxView(netbox_server, f"test-cluster-{next(_clusters)}")
    nb.post("virtualization/virtual-machines", name="known.example.test",
            cluster=nb.cluster_id)
    elsewhere.post("virtualization/virtual-machines", name="elsewhere.example.test",
                   cluster=elsewhere.cluster_id)
    root = install_hooks(write_config(
        f'[node]\nfqdn = "node1.example.test"\n\n[policy]\nenabled = true\n'
        f'netbox_require_known = true\nnetbox_fail_closed = true\n\n'
        f'[netbox]\nurl = "{netbox_server.url}"\ntoken_file = "{token_file}"\n'
        f'cluster = "{nb.cluster}"\ntimeout = 10.0\n'))

    def pre(name: str) -> tuple[bool, str]:
        results = actions_entry(run_hooks(root, "instance-add", "pre", instance_env(
            "instance-add", "pre", name, [])))
        [result] = results
        return result.status == "fail", result.output.strip()

    vetoed, line = pre("known.example.test")
    assert not vetoed, line
    for name in ("unknown.example.test", "elsewhere.example.test"):
        vetoed, line = pre(name)
        assert vetoed and (f": veto: NetBox does not know a virtual machine named '{name}' "
                           f"in cluster '{nb.cluster}'") in line, line

"""netbox action through the hooks-runner emulator, against a FAKE NetBox.

NetBox (Django + PostgreSQL + Redis) cannot run on this machine: these tests use
tests/helpers/netbox_fake.py, a local HTTP fake of only the REST endpoints pynetbox
uses for hookpack's calls. What a real NetBox would do beyond that is not proven here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hookpack.emulator import run_hooks
from tests.helpers.entries import actions_entry
from tests.helpers.ganeti_env import instance_env
from tests.helpers.netbox_fake import FakeNetBox

NAME = "inst1.example.test"
VMS = "virtualization/virtual-machines"
IFACES = "virtualization/interfaces"
IPS = "ipam/ip-addresses"


@pytest.fixture
def netbox():
    with FakeNetBox() as fake:
        fake.add("virtualization/clusters", name="cluster1.example.test")
        yield fake


@pytest.fixture
def nb_hooks(tmp_path, write_config, install_hooks, netbox):
    def install(extra: str = "") -> Path:
        token = tmp_path / "netbox.token"
        token.write_text(netbox.token + "\n")
        token.chmod(0o600)
        config = write_config(
            f'[node]\nfqdn = "node1.example.test"\n\n[netbox]\nenabled = true\n'
            f'url = "{netbox.url}"\ntoken_file = "{token}"\ntimeout = 1.0\n{extra}')
        return install_hooks(config)
    return install


def hook(root: Path, hpath: str, name: str, ips: list[str], **kw) -> str:
    [result] = actions_entry(run_hooks(root, hpath, "post",
                                       instance_env(hpath, "post", name, ips, **kw)))
    assert result.status == "success"
    [line] = result.output.splitlines()
    return line


def vm(netbox: FakeNetBox, name: str) -> dict | None:
    return next((v for v in netbox.objects(VMS) if v["name"] == name), None)


def test_add_creates_the_vm_with_interfaces_ips_and_primary_ip(netbox, nb_hooks):
    root = nb_hooks()
    line = hook(root, "instance-add", NAME, ["198.51.100.21", "2001:db8::21"])
    assert line.startswith(f"hookpack netbox: {NAME}: changed: created VM {NAME}; "
                           "created interface eth0; added IP 198.51.100.21/32 to eth0; ")
    machine = vm(netbox, NAME)
    assert machine is not None
    assert (machine["cluster"]["name"], machine["vcpus"], machine["memory"], machine["disk"],
            machine["status"]["value"]) == ("cluster1.example.test", "1.00", 128, 64, "offline")
    assert [t["slug"] for t in machine["tags"]] == ["hookpack"]
    assert machine["primary_ip4"]["address"] == "198.51.100.21/32"
    assert machine["primary_ip6"]["address"] == "2001:db8::21/128"
    ifaces = sorted((i["name"], i["mac_address"]) for i in netbox.objects(IFACES))
    assert ifaces == [("eth0", "AA:00:00:00:00:10"), ("eth1", "AA:00:00:00:00:11")]
    again = hook(root, "instance-add", NAME, ["198.51.100.21", "2001:db8::21"])
    assert again.startswith(f"hookpack netbox: {NAME}: nochange: virtual machine in step (")


def test_modify_rename_and_remove(netbox, nb_hooks):
    root = nb_hooks()
    hook(root, "instance-add", NAME, ["198.51.100.21"])
    line = hook(root, "instance-modify", NAME, ["198.51.100.21"], after_ips=["198.51.100.22"])
    assert "added IP 198.51.100.22/32 to eth0" in line
    assert "removed IP 198.51.100.21/32" in line
    assert vm(netbox, NAME)["primary_ip4"]["address"] == "198.51.100.22/32"
    line = hook(root, "instance-rename", NAME, ["198.51.100.22"], after_name="web1.example.test")
    assert ": changed: updated VM web1.example.test: name" in line
    assert vm(netbox, NAME) is None and vm(netbox, "web1.example.test") is not None
    line = hook(root, "instance-remove", "web1.example.test", ["198.51.100.22"])
    assert "removed IP 198.51.100.22/32; deleted VM web1.example.test" in line
    assert netbox.objects(VMS) == [] and netbox.objects(IPS) == []


def test_vm_hookpack_did_not_create_is_updated_but_never_deleted(netbox, nb_hooks):
    hand = netbox.add(VMS, name=NAME, cluster=1, vcpus=4, memory=4096, status="planned",
                      comments="made by hand")
    netbox.add(IFACES, name="mgmt0", virtual_machine=hand["id"])
    root = nb_hooks()
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert f"updated VM {NAME}: disk, memory, status, vcpus" in line
    hook(root, "instance-remove", NAME, ["198.51.100.21"])
    machine = vm(netbox, NAME)
    assert machine is not None and machine["status"]["value"] == "offline"
    assert machine["comments"] == "made by hand"
    assert "mgmt0" in {i["name"] for i in netbox.objects(IFACES)}


def test_missing_cluster_is_a_clear_failure(netbox, nb_hooks):
    root = nb_hooks('cluster = "nope"')
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert ": failed: NetBox has no cluster named 'nope'" in line
    assert netbox.objects(VMS) == []


def test_bad_token_and_unreachable_netbox_fail_cleanly(netbox, nb_hooks, tmp_path):
    root = nb_hooks()
    (tmp_path / "netbox.token").write_text("wrong-token-abc\n")
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert ": failed: NetBox refused " in line and "HTTP 403" in line
    assert "wrong-token-abc" not in line
    netbox.delay = 2.0  # longer than the 1 s timeout
    (tmp_path / "netbox.token").write_text(netbox.token)
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert ": failed: NetBox did not answer in time" in line


def test_doctor_checks_token_reachability_and_cluster(netbox, nb_hooks, tmp_path):
    nb_hooks('cluster = "cluster1.example.test"')
    config = tmp_path / "hookpack.toml"

    def doctor() -> list[str]:
        r = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config",
                            str(config)], capture_output=True, text=True, timeout=60)
        return [line for line in r.stdout.splitlines() if " netbox: " in line]

    assert doctor() == ["PASS netbox: NetBox answers; cluster 'cluster1.example.test' found"]
    config.write_text(config.read_text().replace('cluster = "cluster1.example.test"',
                                                 'cluster = "nope"'))
    assert doctor() == ["FAIL netbox: NetBox has no cluster named 'nope' -> create it in "
                        "NetBox or set [netbox] cluster"]
    (tmp_path / "netbox.token").chmod(0o644)
    [line] = doctor()
    assert line.startswith("FAIL netbox: ") and "chmod 600" in line

"""Real Ganeti lab: one instance added, renamed, modified and removed with a real PowerDNS
and a real NetBox 4.7 both in step after each step.

pdns_server (Debian's) and NetBox (vmtestbed.netbox: PyPI's netbox on Debian 13's
Python, PostgreSQL and Redis) run inside the master node's network namespace, on its
loopback, where the master's hooks reach them. The test reads both over their REST
APIs from the same namespace, with the standard library.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vmtestbed import netbox as nbserver
from vmtestbed import pdns
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import LAB_CONFIG
from vmtestbed.ganeti.layout import CLUSTER_NAME, instance_ip, instance_name

from tests.ganeti.scenario import MASTER
from tests.helpers.netbox_view import NetBoxView

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

HOOKPACK = "/opt/hookpack-lab/venv/bin/hookpack"
ZONE, REVZONE = "example.test.", "100.51.198.in-addr.arpa."
PDNS_KEY, NETBOX_TOKEN = "/etc/hookpack/powerdns-api-key", "/etc/hookpack/netbox-token"
NAME, RENAMED = instance_name(11), instance_name(12)
IP, NEW_IP = instance_ip(11), instance_ip(12)


def _ptr(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."


def _secret(node, path: str, value: str) -> None:
    target = node.host_path(path)
    target.write_text(value + "\n")
    target.chmod(0o600)


@pytest.fixture(scope="module")
def both(ganeti_lab, tmp_path_factory):
    """The lab with PowerDNS and NetBox up in the master's namespace and the master's
    config pointing at both; everything put back afterwards."""
    lab = ganeti_lab
    master = lab.node(MASTER)
    wrap = master.in_netns([])
    config = master.host_path("/etc/hookpack/hookpack.toml")
    before = config.read_text()
    work: Path = tmp_path_factory.mktemp("lab-integrations")
    with pdns.running_pdns(work / "pdns", wrap=wrap) as dns, \
            nbserver.running_netbox(work / "netbox", wrap=wrap) as netbox:
        try:
            for zone in (ZONE, REVZONE):
                pdns.api(dns, "POST", "/api/v1/servers/localhost/zones",
                         {"name": zone, "kind": "Native",
                          "nameservers": ["ns1.example.test."]}, wrap=wrap)
            view = NetBoxView(netbox, CLUSTER_NAME, wrap=wrap)
            _secret(master, PDNS_KEY, dns.api_key)
            _secret(master, NETBOX_TOKEN, netbox.token)
            config.write_text(LAB_CONFIG + (
                f'\n[dns]\nenabled = true\napi_url = "{dns.url}"\n'
                f'api_key_file = "{PDNS_KEY}"\nforward_zones = ["example.test"]\n'
                f'reverse_zones = ["{REVZONE}"]\ntimeout = 5.0\n\n'
                f'[netbox]\nenabled = true\nurl = "{netbox.url}"\n'
                f'token_file = "{NETBOX_TOKEN}"\ntimeout = 10.0\n'))
            lab.run_on(MASTER, [HOOKPACK, "config", "check"], check=True)
            yield lab, dns, view
        finally:
            config.write_text(before)
            for path in (PDNS_KEY, NETBOX_TOKEN):
                master.host_path(path).unlink(missing_ok=True)
            for name in (NAME, RENAMED):
                lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name,
                        check=False)


def _gnt(lab, *argv: str) -> None:
    r = lab.gnt(*argv, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _ganeti(lab, name: str) -> dict[str, str]:
    fields = ["be/vcpus", "be/maxmem", "nic.macs", "nic.ips"]
    out = lab.gnt("gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                  ",".join(fields), name).stdout.strip()
    return dict(zip(fields, out.split("|"), strict=True))


def _in_step(lab, dns, nb: NetBoxView, name: str, ip: str, gone: tuple[str, str]) -> None:
    """PowerDNS and NetBox both hold ``name`` at ``ip`` as Ganeti has it, and nothing of
    the name and address ``gone``."""
    wrap = nb.wrap
    assert pdns.rrsets(dns, ZONE, name + ".", wrap=wrap) == {"A": {ip}}
    assert pdns.rrsets(dns, REVZONE, _ptr(ip), wrap=wrap) == {"PTR": {name + "."}}
    old_name, old_ip = gone
    if old_name != name:
        assert pdns.rrsets(dns, ZONE, old_name + ".", wrap=wrap) == {}
        assert nb.vm(old_name) is None
    if old_ip != ip:
        assert pdns.rrsets(dns, REVZONE, _ptr(old_ip), wrap=wrap) == {}
        assert nb.ip(f"{old_ip}/32") is None
    ganeti = _ganeti(lab, name)
    vm = nb.vm(name)
    assert vm is not None, f"NetBox has no VM {name}"
    assert (vm["vcpus"], vm["memory"]) == (float(ganeti["be/vcpus"]),
                                           int(ganeti["be/maxmem"])), vm
    assert nb.ips(vm) == {f"{ip}/32": "eth0"}
    assert nb.macs(vm) == {ganeti["nic.macs"].upper(): "eth0"}
    assert vm["primary_ip4"]["address"] == f"{ip}/32"


def test_add_rename_modify_remove_keep_powerdns_and_netbox_in_step(both):
    lab, dns, nb = both
    _gnt(lab, "gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default",
         "--disk", "0:size=16M", "-B", "memory=64", "--net", f"0:ip={IP}",
         "--no-ip-check", "--no-name-check", "--no-start", "-n", MASTER, NAME)
    _in_step(lab, dns, nb, NAME, IP, (NAME, IP))
    vm_id = nb.vm(NAME)["id"]

    # 3.0 checks the new name unless told not to, and then asks to confirm (-f); 3.1
    # checks nothing by default and has none of these options
    checks = ["-f", "--no-ip-check", "--no-name-check"] if lab.version == "3.0" else []
    _gnt(lab, "gnt-instance", "rename", *checks, NAME, RENAMED)
    compat.note(lab.version, "rename.options", " ".join(f"`{c}`" for c in checks) or
                "none (3.1 checks nothing by default and has no such options)")
    _in_step(lab, dns, nb, RENAMED, IP, (NAME, IP))
    assert nb.vm(RENAMED)["id"] == vm_id  # the same VM, renamed

    # -f: 3.1 hotplugs by default and asks before it touches a running instance
    _gnt(lab, "gnt-instance", "modify", "-f", "--net", f"0:modify,ip={NEW_IP}", RENAMED)
    _in_step(lab, dns, nb, RENAMED, NEW_IP, (RENAMED, IP))
    _gnt(lab, "gnt-instance", "modify", "-f", "-B", "vcpus=2,maxmem=96,minmem=96", RENAMED)
    _in_step(lab, dns, nb, RENAMED, NEW_IP, (RENAMED, NEW_IP))
    assert nb.vm(RENAMED)["id"] == vm_id

    _gnt(lab, "gnt-instance", "remove", "-f", "--shutdown-timeout=0", RENAMED)
    assert pdns.rrsets(dns, ZONE, RENAMED + ".", wrap=nb.wrap) == {}
    assert pdns.rrsets(dns, REVZONE, _ptr(NEW_IP), wrap=nb.wrap) == {}
    assert nb.vm(RENAMED) is None and nb.ip(f"{NEW_IP}/32") is None
    compat.note(lab.version, "action.dns_netbox", "PowerDNS records and the NetBox VM in "
                "step after add, rename, NIC modify, -B modify and remove")


def test_netbox_sync_on_the_master_brings_back_what_netbox_lost(both):
    """A VM deleted in NetBox behind hookpack's back (as if its add hook had failed):
    `hookpack netbox sync` on the master reads Ganeti and puts it back, once."""
    lab, _dns, nb = both
    _gnt(lab, "gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default",
         "--disk", "0:size=16M", "-B", "memory=64", "--net", f"0:ip={IP}",
         "--no-ip-check", "--no-name-check", "--no-start", "-n", MASTER, NAME)
    try:
        nb.rest("DELETE", f"virtualization/virtual-machines/{nb.vm(NAME)['id']}/")
        assert nb.vm(NAME) is None
        dry = lab.run_on(MASTER, [HOOKPACK, "netbox", "sync", "--all", "--dry-run"],
                         timeout=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"would   created VM {NAME}" in dry.stdout, dry.stdout
        assert nb.vm(NAME) is None
        done = lab.run_on(MASTER, [HOOKPACK, "netbox", "sync", "--all"], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"changed created VM {NAME}" in done.stdout, done.stdout
        ganeti = _ganeti(lab, NAME)
        vm = nb.vm(NAME)
        assert nb.ips(vm) == {f"{IP}/32": "eth0"}
        assert nb.macs(vm) == {ganeti["nic.macs"].upper(): "eth0"}
        again = lab.run_on(MASTER, [HOOKPACK, "netbox", "sync", NAME], timeout=120)
        assert again.returncode == 0 and "changed 0 object(s), 0 problem(s)" in again.stdout, \
            again.stdout + again.stderr
        print(done.stdout)
    finally:
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", NAME, check=False)
    assert nb.vm(NAME) is None

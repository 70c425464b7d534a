"""Real Ganeti lab: the policy gate and the dns action against a real PowerDNS.

pdns_server (Debian's, sqlite3 backend) runs inside the master node's namespaces on
its loopback, where the master's hooks reach it. The test reads PowerDNS through
the same namespace.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from vmtestbed import pdns
from vmtestbed.ganeti.hookpack_install import LAB_CONFIG
from vmtestbed.ganeti.layout import instance_ip, instance_name

from tests.ganeti.scenario import MASTER

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

OK_NAME, OK_IP = instance_name(5), instance_ip(5)
TAKEN_NAME, TAKEN_IP = instance_name(6), instance_ip(6)
FOREIGN_IP = "198.51.100.250"
BAD_NAME = "web5.example.test"
KEY_PATH = "/etc/hookpack/powerdns-api-key"
ZONE, REVZONE = "example.test.", "100.51.198.in-addr.arpa."


def _api(lab, server, method: str, path: str, body: object = None) -> object:
    """One PowerDNS API call made from inside the master's network namespace."""
    return pdns.api(server, method, path, body, wrap=lab.node(MASTER).in_netns([]))


def _rrsets(lab, server, zone: str, name: str) -> dict[str, set[str]]:
    return pdns.rrsets(server, zone, name, wrap=lab.node(MASTER).in_netns([]))


def _ptr(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."


@pytest.fixture(scope="module")
def dns_lab(ganeti_lab, tmp_path_factory):
    lab = ganeti_lab
    master = lab.node(MASTER)
    config = master.host_path("/etc/hookpack/hookpack.toml")
    before = config.read_text()
    directory: Path = tmp_path_factory.mktemp("lab-pdns")
    with pdns.running_pdns(directory, wrap=master.in_netns([])) as server:
        try:
            for zone in (ZONE, REVZONE):
                _api(lab, server, "POST", "/api/v1/servers/localhost/zones",
                     {"name": zone, "kind": "Native", "nameservers": ["ns1.example.test."]})
            key = master.host_path(KEY_PATH)
            key.write_text(server.api_key + "\n")
            key.chmod(0o600)
            config.write_text(LAB_CONFIG + "dns_check = true\n\n" + (
                f'[dns]\nenabled = true\napi_url = "{server.url}"\n'
                f'api_key_file = "{KEY_PATH}"\nforward_zones = ["example.test"]\n'
                f'reverse_zones = ["{REVZONE}"]\ntimeout = 2.0\n'))
            lab.run_on(MASTER, ["/opt/hookpack-lab/venv/bin/hookpack", "config", "check"],
                       check=True)
            yield lab, server
        finally:
            config.write_text(before)
            master.host_path(KEY_PATH).unlink(missing_ok=True)
            for name in (OK_NAME, TAKEN_NAME, BAD_NAME):
                lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name,
                        check=False)


def _add(lab, name: str, ip: str):
    return lab.gnt("gnt-instance", "add", "-t", "sharedfile", "-o", "noop+default",
                   "--disk", "0:size=16M", "-B", "memory=64", "--net", f"0:ip={ip}",
                   "--no-ip-check", "--no-name-check", "--no-start", "-n", MASTER, name,
                   check=False)


def _names(lab) -> list[str]:
    return lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()


def test_policy_rejects_a_bad_name_with_the_hooks_message(dns_lab):
    lab, server = dns_lab
    r = _add(lab, BAD_NAME, OK_IP)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "instance-add-pre.d/50-hookpack" in err
    assert f"hookpack policy: {BAD_NAME}: veto: instance name '{BAD_NAME}' does not match" \
        in err
    assert BAD_NAME not in _names(lab)
    assert _rrsets(lab, server, ZONE, BAD_NAME + ".") == {}


def test_policy_rejects_a_name_dns_has_elsewhere(dns_lab):
    lab, server = dns_lab
    _api(lab, server, "PATCH", f"/api/v1/servers/localhost/zones/{ZONE}", {"rrsets": [
        {"name": TAKEN_NAME + ".", "type": "A", "ttl": 300, "changetype": "REPLACE",
         "records": [{"content": FOREIGN_IP, "disabled": False}]}]})
    r = _add(lab, TAKEN_NAME, TAKEN_IP)
    assert r.returncode != 0
    assert (f"hookpack policy: {TAKEN_NAME}: veto: DNS already has {TAKEN_NAME} -> "
            f"{FOREIGN_IP}, an address the instance will not use") in r.stdout + r.stderr
    assert TAKEN_NAME not in _names(lab)
    assert _rrsets(lab, server, ZONE, TAKEN_NAME + ".") == {"A": {FOREIGN_IP}}


def test_allowed_add_appears_in_powerdns_and_remove_removes_it(dns_lab):
    lab, server = dns_lab
    r = _add(lab, OK_NAME, OK_IP)
    assert r.returncode == 0, r.stdout + r.stderr
    assert OK_NAME in _names(lab)
    assert _rrsets(lab, server, ZONE, OK_NAME + ".") == {"A": {OK_IP}}
    assert _rrsets(lab, server, REVZONE, _ptr(OK_IP)) == {"PTR": {OK_NAME + "."}}
    r = lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", OK_NAME, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _rrsets(lab, server, ZONE, OK_NAME + ".") == {}
    assert _rrsets(lab, server, REVZONE, _ptr(OK_IP)) == {}
    # The record hookpack did not create is still there.
    assert _rrsets(lab, server, ZONE, TAKEN_NAME + ".") == {"A": {FOREIGN_IP}}


SYNC_NAME, SYNC_IP = instance_name(9), instance_ip(9)
HOOKPACK = "/opt/hookpack-lab/venv/bin/hookpack"


def test_dns_sync_catches_up_after_a_failed_post_hook(dns_lab):
    """PowerDNS frozen (SIGSTOP) during the add: the instance is added (a post hook cannot
    stop it), its dns post hook fails; `hookpack dns sync` on the master, reading the
    instances from the real Ganeti, then brings PowerDNS in step, once."""
    lab, server = dns_lab
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        r = _add(lab, SYNC_NAME, SYNC_IP)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # Ganeti only logs post hooks' results: the dispatcher's run record has the failure
    stats = json.loads(lab.node_file(MASTER, "/var/lib/hookpack/runs/dns.json").read_text())
    last = stats["last"][0]
    assert (last["instance"], last["hpath"], last["outcome"]) == (
        SYNC_NAME, "instance-add", "failed"), last
    assert "PowerDNS API at " in last["message"], last
    assert _rrsets(lab, server, ZONE, SYNC_NAME + ".") == {}
    try:
        dry = lab.run_on(MASTER, [HOOKPACK, "dns", "sync", "--all", "--dry-run"], timeout=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert f"would   set A {SYNC_NAME} -> {SYNC_IP}" in dry.stdout, dry.stdout
        assert _rrsets(lab, server, ZONE, SYNC_NAME + ".") == {}
        done = lab.run_on(MASTER, [HOOKPACK, "dns", "sync", "--all"], timeout=120)
        assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: TAKEN_NAME's conflict
        assert f"changed set A {SYNC_NAME} -> {SYNC_IP}" in done.stdout, done.stdout
        assert _rrsets(lab, server, ZONE, SYNC_NAME + ".") == {"A": {SYNC_IP}}
        assert _rrsets(lab, server, REVZONE, _ptr(SYNC_IP)) == {"PTR": {SYNC_NAME + "."}}
        again = lab.run_on(MASTER, [HOOKPACK, "dns", "sync", SYNC_NAME], timeout=120)
        assert again.returncode == 0 and "changed 0 RRset(s), 0 conflict(s)" in again.stdout, \
            again.stdout + again.stderr
        print(done.stdout)
    finally:
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", SYNC_NAME,
                check=False)
    assert _rrsets(lab, server, ZONE, SYNC_NAME + ".") == {}

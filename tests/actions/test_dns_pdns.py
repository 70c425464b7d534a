"""dns action against a real PowerDNS (Debian pdns-server, sqlite3 backend) on loopback.

Every hook run goes through installed entries and the Ganeti hooks-runner emulator.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmtestbed import pdns

from hookpack.adapters.powerdns import Change, Client
from hookpack.emulator import run_hooks
from tests.helpers.entries import actions_entry
from tests.helpers.ganeti_env import instance_env

# A real pdns_server (scripts/setup installs it): a missing one fails the tests, never skips.
pytestmark = pytest.mark.slow

FWD = "example.test."
REV4 = "100.51.198.in-addr.arpa."
REV6 = "8.b.d.0.1.0.0.2.ip6.arpa."
NAME = "inst1.example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pdns.running_pdns(tmp_path_factory.mktemp("pdns")) as srv:
        client = srv.client()
        for zone in (FWD, REV4, REV6, "other.test."):
            client.create_zone(zone, ["ns1.example.test."])
        yield srv


@pytest.fixture
def zones(server):
    """Empty the test names between tests (the zones stay)."""
    yield server
    client = server.client()
    for zone in (FWD, REV4, REV6):
        _, payload = client.request("GET", f"/api/v1/servers/localhost/zones/{zone}")
        deletes = [Change(zone, r["name"], r["type"], "DELETE") for r in payload["rrsets"]
                   if r["type"] not in ("SOA", "NS")]
        client.patch(zone, deletes)


@pytest.fixture
def dns_hooks(tmp_path, write_config, install_hooks, server):
    def install(extra: str = "", url: str | None = None, key_mode: int = 0o600) -> Path:
        key = tmp_path / "pdns.key"
        key.write_text(server.api_key + "\n")
        key.chmod(key_mode)
        config = write_config(
            f'[node]\nfqdn = "node1.example.test"\n\n[dns]\nenabled = true\n'
            f'api_url = "{url or server.url}"\napi_key_file = "{key}"\n'
            f'forward_zones = ["example.test"]\n'
            f'reverse_zones = ["{REV4}", "{REV6}"]\nttl = 600\ntimeout = 1.0\n{extra}')
        return install_hooks(config)
    return install


def hook(root: Path, hpath: str, name: str, ips: list[str], **kw) -> str:
    environ = instance_env(hpath, "post", name, ips, **kw)
    [result] = actions_entry(run_hooks(root, hpath, "post", environ))
    assert result.status == "success"
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def ptr4(last: int) -> str:
    return f"{last}.100.51.198.in-addr.arpa."


def test_add_creates_records_second_run_changes_nothing(zones, dns_hooks):
    root = dns_hooks()
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert line.startswith(f"hookpack dns: {NAME}: changed: set A {NAME} -> 198.51.100.21; "
                           "set PTR 21.100.51.198.in-addr.arpa -> inst1.example.test.")
    assert "(instance-add/post, 2 changes," in line
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.21"}}
    assert zones.rrsets(REV4, ptr4(21)) == {"PTR": {NAME + "."}}
    [rrset] = zones.client().rrsets(FWD, NAME + ".")
    assert (rrset.ttl, rrset.owner()) == (600, NAME)
    again = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert again.startswith(f"hookpack dns: {NAME}: nochange: records in step (")


def test_modify_changes_the_address_and_moves_the_ptr(zones, dns_hooks):
    root = dns_hooks()
    hook(root, "instance-add", NAME, ["198.51.100.21"])
    line = hook(root, "instance-modify", NAME, ["198.51.100.21"],
                after_ips=["198.51.100.22", "2001:db8::22"])
    assert ": changed: " in line
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.22"}, "AAAA": {"2001:db8::22"}}
    assert zones.rrsets(REV4, ptr4(21)) == {}
    assert zones.rrsets(REV4, ptr4(22)) == {"PTR": {NAME + "."}}
    nibbles = "2.2.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2.ip6.arpa."
    assert zones.rrsets(REV6, nibbles) == {"PTR": {NAME + "."}}
    assert ": nochange: " in hook(root, "instance-modify", NAME, ["198.51.100.22",
                                                                  "2001:db8::22"])
    # Dropping the IPv6 NIC removes its AAAA and PTR.
    hook(root, "instance-modify", NAME, ["198.51.100.22", "2001:db8::22"],
         after_ips=["198.51.100.22"])
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.22"}}
    assert zones.rrsets(REV6, nibbles) == {}


def test_modify_as_ganeti_sends_it_removes_the_old_ptr(zones, dns_hooks):
    """Ganeti builds a modify's environment, pre and post, from the NICs after the change
    (found in the real lab): the old address is known only from hookpack's A record."""
    root = dns_hooks()
    hook(root, "instance-add", NAME, ["198.51.100.21"])
    line = hook(root, "instance-modify", NAME, ["198.51.100.23"])
    assert ": changed: " in line, line
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.23"}}
    assert zones.rrsets(REV4, ptr4(21)) == {}
    assert zones.rrsets(REV4, ptr4(23)) == {"PTR": {NAME + "."}}


def test_rename_moves_records(zones, dns_hooks):
    root = dns_hooks()
    hook(root, "instance-add", NAME, ["198.51.100.21"])
    line = hook(root, "instance-rename", NAME, ["198.51.100.21"],
                after_name="web1.example.test")
    assert ": changed: " in line
    assert zones.rrsets(FWD, NAME + ".") == {}
    assert zones.rrsets(FWD, "web1.example.test.") == {"A": {"198.51.100.21"}}
    assert zones.rrsets(REV4, ptr4(21)) == {"PTR": {"web1.example.test."}}
    [rrset] = zones.client().rrsets(REV4, ptr4(21))
    assert rrset.owner() == "web1.example.test"
    assert ": nochange: " in hook(root, "instance-rename", NAME, ["198.51.100.21"],
                                  after_name="web1.example.test")


def test_remove_deletes_only_hookpack_records(zones, dns_hooks):
    client = zones.client()
    # Records an operator made by hand: same name other type, other names, other PTR.
    client.patch(FWD, [
        _foreign(FWD, NAME + ".", "TXT", '"owned by ops"'),
        _foreign(FWD, "mail.example.test.", "A", "198.51.100.9"),
    ])
    client.patch(REV4, [_foreign(REV4, ptr4(9), "PTR", "mail.example.test.")])
    root = dns_hooks()
    hook(root, "instance-add", NAME, ["198.51.100.21"])
    line = hook(root, "instance-remove", NAME, ["198.51.100.21"])
    assert line.startswith(f"hookpack dns: {NAME}: changed: deleted A {NAME}; deleted PTR ")
    assert zones.rrsets(FWD, NAME + ".") == {"TXT": {'"owned by ops"'}}
    assert zones.rrsets(FWD, "mail.example.test.") == {"A": {"198.51.100.9"}}
    assert zones.rrsets(REV4, ptr4(9)) == {"PTR": {"mail.example.test."}}
    assert zones.rrsets(REV4, ptr4(21)) == {}
    assert ": nochange: " in hook(root, "instance-remove", NAME, ["198.51.100.21"])


def test_records_hookpack_did_not_create_are_never_overwritten_or_deleted(zones, dns_hooks):
    client = zones.client()
    client.patch(FWD, [_foreign(FWD, NAME + ".", "A", "198.51.100.77")])
    root = dns_hooks()
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert f": failed: A {NAME} holds 198.51.100.77, records hookpack did not create; " \
           "left alone; done: set PTR 21.100.51.198.in-addr.arpa" in line
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.77"}}
    hook(root, "instance-remove", NAME, ["198.51.100.21"])
    assert zones.rrsets(FWD, NAME + ".") == {"A": {"198.51.100.77"}}
    assert zones.rrsets(REV4, ptr4(21)) == {}


def test_name_outside_the_zones_and_address_outside_reverse_zones(zones, dns_hooks):
    root = dns_hooks()
    line = hook(root, "instance-add", "db1.other.test", ["203.0.113.5"])
    assert ": nochange: records in step" in line
    assert zones.rrsets("other.test.", "db1.other.test.") == {}


def test_server_down_fails_cleanly_within_the_deadline(zones, dns_hooks):
    dead = f"http://127.0.0.1:{pdns.free_port()}"
    root = dns_hooks(extra="", url=dead)
    start = time.monotonic()
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert time.monotonic() - start < 15
    assert f"hookpack dns: {NAME}: failed: PowerDNS API at 127.0.0.1:" in line
    assert "unreachable" in line


def test_group_readable_key_file_is_refused(zones, dns_hooks):
    root = dns_hooks(key_mode=0o640)
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert ": failed: " in line and "chmod 600" in line
    assert zones.rrsets(FWD, NAME + ".") == {}


def test_wrong_api_key_is_a_clean_failure_without_the_key(zones, dns_hooks, tmp_path):
    root = dns_hooks()
    (tmp_path / "pdns.key").write_text("wrong-key-xyz\n")
    line = hook(root, "instance-add", NAME, ["198.51.100.21"])
    assert ": failed: PowerDNS API GET " in line and "HTTP 401" in line
    assert "wrong-key-xyz" not in line


def _foreign(zone: str, name: str, rtype: str, content: str) -> Change:
    """An RRset as an operator would write it: no hookpack comment."""
    class Foreign(Change):
        def to_json(self, comments=True):
            return {"name": self.name, "type": self.type, "changetype": "REPLACE",
                    "ttl": 300, "records": [{"content": content, "disabled": False}]}
    return Foreign(zone, name, rtype, "REPLACE")


def test_client_rejects_a_non_http_url():
    from hookpack.adapters.powerdns import PowerDnsError
    with pytest.raises(PowerDnsError, match="not an http"):
        Client("ftp://x", "k")


def test_cli_dns_check_reads_each_configured_zone(zones, dns_hooks, tmp_path):
    dns_hooks()
    config = tmp_path / "hookpack.toml"
    r = subprocess.run([sys.executable, "-m", "hookpack", "dns", "check", "--config",
                        str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "records: hookpack marks the records it owns with an RRset comment (account "
        "hookpack); records without it are never changed",
        f"zone {FWD}: ok", f"zone {REV4}: ok", f"zone {REV6}: ok"]
    config.write_text(config.read_text().replace('forward_zones = ["example.test"]',
                                                 'forward_zones = ["missing.test"]'))
    r = subprocess.run([sys.executable, "-m", "hookpack", "dns", "check", "--config",
                        str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout.splitlines()[1].startswith("zone missing.test.: PowerDNS API GET ")
    assert "HTTP 404" in r.stdout.splitlines()[1]


def test_doctor_reports_each_zone(zones, dns_hooks, tmp_path):
    dns_hooks()
    config = tmp_path / "hookpack.toml"
    config.write_text(config.read_text().replace('forward_zones = ["example.test"]',
                                                 'forward_zones = ["missing.test"]'))
    r = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    lines = [line for line in r.stdout.splitlines() if " dns: " in line]
    assert lines[0] == ("PASS dns: hookpack marks the records it owns with an RRset comment "
                        "(account hookpack); records without it are never changed")
    assert lines[1].startswith("FAIL dns: zone missing.test.: PowerDNS API GET ")
    assert lines[2:] == [f"PASS dns: zone {REV4} readable at 127.0.0.1",
                         f"PASS dns: zone {REV6} readable at 127.0.0.1"]
    assert r.returncode == 1

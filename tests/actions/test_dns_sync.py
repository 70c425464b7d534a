"""`hookpack dns sync` and backends without comments, against real PowerDNS servers
(Debian's pdns-server with the sqlite3 backend, and with the LMDB backend, which cannot
store comments). Ganeti's instance list is given as data here (the lab test runs the
real `gnt-instance list`: tests/ganeti/test_dns_lab.py)."""

from __future__ import annotations

import pytest
from vmtestbed import pdns

from hookpack.actions.dns.action import SETTINGS, choose_marks
from hookpack.actions.dns.sync import parse_instance_list, report, sync_plan
from hookpack.adapters.powerdns import Change
from hookpack.config import load_config
from tests.actions.test_dns_pdns import _foreign, hook

pytestmark = pytest.mark.slow

FWD = "example.test."
REV4 = "100.51.198.in-addr.arpa."
A, B = "inst1.example.test", "inst2.example.test"


def ptr4(last: int) -> str:
    return f"{last}.100.51.198.in-addr.arpa."


@pytest.fixture(scope="module", params=["gsqlite3", "lmdb"])
def server(request, tmp_path_factory):
    if pdns.available(request.param):
        pytest.fail(pdns.available(request.param))
    with pdns.running_pdns(tmp_path_factory.mktemp(f"pdns-{request.param}"),
                           backend=request.param) as srv:
        for zone in (FWD, REV4):
            srv.client().create_zone(zone, ["ns1.example.test."])
        srv.backend = request.param
        yield srv


@pytest.fixture
def zones(server):
    yield server
    client = server.client()
    for zone in (FWD, REV4):
        deletes = [Change(zone, r.name, r.type, "DELETE") for r in client._get(zone, None, 3)
                   if r.type not in ("SOA", "NS")]
        client.patch(zone, deletes)


@pytest.fixture
def setup(zones, tmp_path, write_config, install_hooks):
    key = tmp_path / "pdns.key"
    key.write_text(zones.api_key + "\n")
    key.chmod(0o600)
    config = write_config(
        f'[node]\nfqdn = "node1.example.test"\n\n[dns]\nenabled = true\n'
        f'api_url = "{zones.url}"\napi_key_file = "{key}"\nforward_zones = ["example.test"]\n'
        f'reverse_zones = ["{REV4}"]\nttl = 600\ntimeout = 2.0\n')
    settings = load_config(config, required=True).section("dns", SETTINGS)
    client = zones.client()
    choose_marks(client, settings, 2.0)
    return zones, client, settings, install_hooks(config)


def everything(server) -> dict[tuple[str, str], frozenset[str]]:
    client = server.client()
    return {(r.name, r.type): r.contents for zone in (FWD, REV4)
            for r in client._get(zone, None, 3) if r.type not in ("SOA", "NS")}


def sync(client, settings, instances, only=None, dry_run=False) -> tuple[int, int]:
    plan = sync_plan(client, settings, instances, only, 2.0)
    changes = sum(len(c) for c in plan.changes.values())
    code = report(plan, client, dry_run=dry_run, timeout=2.0, scope="test")
    return changes, code


def test_the_backend_decides_how_records_are_marked(setup):
    server, client, _, _ = setup
    assert client.marks == ("txt" if server.backend == "lmdb" else "comments")


def test_hooks_on_either_backend_and_foreign_records_survive(setup):
    server, client, _, root = setup
    client.marks = "comments"  # the operator's own records, written without any mark
    client.patch(FWD, [_foreign(FWD, A + ".", "TXT", '"owned by ops"'),
                       _foreign(FWD, "mail.example.test.", "A", "198.51.100.9")])
    assert hook(root, "instance-add", A, ["198.51.100.21"]).startswith(
        f"hookpack dns: {A}: changed: set A {A} -> 198.51.100.21; set PTR ")
    assert ": nochange: records in step" in hook(root, "instance-add", A, ["198.51.100.21"])
    have = everything(server)
    assert have[(A + ".", "A")] == {"198.51.100.21"}
    if server.backend == "lmdb":
        assert have[(f"_hookpack.{A}.", "TXT")] == {f'"hookpack:{A}"'}
        assert have[(f"_hookpack.{ptr4(21)}", "TXT")] == {f'"hookpack:{A}"'}
    hook(root, "instance-remove", A, ["198.51.100.21"])
    assert everything(server) == {(A + ".", "TXT"): {'"owned by ops"'},
                                  ("mail.example.test.", "A"): {"198.51.100.9"}}


def test_sync_creates_what_a_failed_hook_missed_then_changes_nothing(setup, capsys):
    server, client, settings, _ = setup
    instances = {A: ["198.51.100.21"], B: ["198.51.100.22"]}
    assert sync(client, settings, instances, dry_run=True) == (4, 0)
    assert "would   set A inst1.example.test -> 198.51.100.21" in capsys.readouterr().out
    assert everything(server) == {}
    assert sync(client, settings, instances) == (4, 0)
    out = capsys.readouterr().out
    assert "changed set A inst2.example.test -> 198.51.100.22" in out
    assert "dns sync: test: changed 4 RRset(s), 0 conflict(s)" in out
    assert everything(server)[(ptr4(22), "PTR")] == {B + "."}
    assert sync(client, settings, instances) == (0, 0)


def test_sync_follows_a_missed_modify_and_remove_and_leaves_foreign_records(setup, capsys):
    server, client, settings, root = setup
    hook(root, "instance-add", A, ["198.51.100.21"])
    hook(root, "instance-add", B, ["198.51.100.22"])
    client.marks, marks = "comments", client.marks
    client.patch(FWD, [_foreign(FWD, "ops.example.test.", "A", "198.51.100.99")])
    client.marks = marks
    # Ganeti now says: A moved to .31 (modify's post hook failed), B is gone (remove's too)
    instances = {A: ["198.51.100.31"], "ops.example.test": ["198.51.100.50"]}
    _, code = sync(client, settings, instances)
    out = capsys.readouterr().out
    assert code == 1  # ops.example.test holds records hookpack did not write: a conflict
    assert "conflict A ops.example.test holds 198.51.100.99, records hookpack did not " \
           "create; left alone" in out
    have = everything(server)
    assert have[(A + ".", "A")] == {"198.51.100.31"}
    assert (ptr4(21), "PTR") not in have and have[(ptr4(31), "PTR")] == {A + "."}
    assert (B + ".", "A") not in have and (ptr4(22), "PTR") not in have
    assert have[("ops.example.test.", "A")] == {"198.51.100.99"}
    assert not any(name.startswith(f"_hookpack.{B}") for name, _ in have)
    assert sync(client, settings, instances)[0] == 0


def test_sync_of_one_instance_touches_only_its_records(setup):
    server, client, settings, root = setup
    hook(root, "instance-add", A, ["198.51.100.21"])
    hook(root, "instance-add", B, ["198.51.100.22"])
    instances = {A: ["198.51.100.21"]}  # B gone, but only A is synced
    assert sync(client, settings, instances, only=A) == (0, 0)
    assert (B + ".", "A") in everything(server)
    assert sync(client, settings, instances, only=B)[0] == 2  # named: its records go
    assert (B + ".", "A") not in everything(server)


def test_parse_ganeti_instance_list():
    text = ("inst1.example.test|198.51.100.21\ninst2.example.test|-\n"
            "inst3.example.test|198.51.100.23,2001:db8::23,198.51.100.23\n"
            "Inst4.Example.Test|\n")
    assert parse_instance_list(text) == {
        "inst1.example.test": ["198.51.100.21"], "inst2.example.test": [],
        "inst3.example.test": ["198.51.100.23", "2001:db8::23"], "inst4.example.test": []}

"""Real Ganeti lab: a live `gnt-instance migrate` gives exactly one region annotation, one
Slack message and one webhook call, all sent from the master; no other node sends.

The receivers (vm-testbed/vmtestbed/receivers.py: the same shape checks as the unit tests) run
inside the master's network namespace on its cluster-network address 198.51.100.1, which
every node reaches: a request from another node would show its own address as peer.
Every node gets the same announce config, so only the role check keeps node2 quiet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmtestbed import receivers
from vmtestbed.ganeti import compat
from vmtestbed.ganeti.hookpack_install import LAB_CONFIG
from vmtestbed.ganeti.layout import instance_ip, instance_name
from vmtestbed.receivers import GRAFANA_TOKEN, HMAC_KEY

from tests.ganeti.scenario import MASTER

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

INST, IP = instance_name(8), instance_ip(8)
N1, N2 = MASTER, "node2.example.test"
MASTER_IP = "198.51.100.1"
RECEIVERS = Path(receivers.__file__)
VENV_HOOKPACK = "/opt/hookpack-lab/venv/bin/hookpack"


@pytest.fixture(scope="module")
def announce_lab(ganeti_lab, tmp_path_factory):
    lab = ganeti_lab
    journal = tmp_path_factory.mktemp("announce-lab") / "requests.jsonl"
    journal.touch()
    receiver = subprocess.Popen(lab.node(N1).in_netns([sys.executable, str(RECEIVERS),
                                                      MASTER_IP, str(journal)]),
                                stdout=subprocess.PIPE, text=True)
    configs = {}
    try:
        urls = json.loads(receiver.stdout.readline())
        grafana_base = urls["grafana"]
        for node in lab.nodes:
            secrets = {"/etc/hookpack/slack-url": urls["slack"],
                       "/etc/hookpack/grafana-token": GRAFANA_TOKEN,
                       "/etc/hookpack/webhook-url": urls["webhook"],
                       "/etc/hookpack/webhook-hmac": HMAC_KEY}
            for path, value in secrets.items():
                host = node.host_path(path)
                host.write_text(value + "\n")
                host.chmod(0o600)
            config = node.host_path("/etc/hookpack/hookpack.toml")
            configs[node.name] = config
            config.write_text(LAB_CONFIG + (
                "\n[announce]\nenabled = true\n"
                'slack_webhook_url_file = "/etc/hookpack/slack-url"\n'
                f'grafana_url = "{grafana_base}"\n'
                'grafana_token_file = "/etc/hookpack/grafana-token"\n'
                'webhook_url_file = "/etc/hookpack/webhook-url"\n'
                'webhook_hmac_key_file = "/etc/hookpack/webhook-hmac"\n'
                f'allow_insecure_hosts = ["{MASTER_IP}"]\n'))
            lab.run_on(node, [VENV_HOOKPACK, "config", "check"], check=True)
        yield lab, journal
    finally:
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INST, check=False)
        for config in configs.values():
            config.write_text(LAB_CONFIG)
        receiver.kill()
        receiver.wait(10)


def requests(journal: Path) -> list[dict]:
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def test_live_migration_is_announced_once_from_the_master(announce_lab):
    lab, journal = announce_lab
    lab.add_instance(8, node=N2)
    lab.wait_guest(INST, IP)
    assert requests(journal) == []  # instance-add is not announced
    t0 = int(time.time() * 1000)
    lab.gnt("gnt-instance", "migrate", "-f", INST)
    t1 = int(time.time() * 1000)
    assert lab.instance_info(INST, ["pnode"]) == {"pnode": N1}
    seen = requests(journal)
    assert sorted(r["kind"] for r in seen) == ["grafana", "slack", "webhook"], seen
    assert {r["peer"] for r in seen} == {MASTER_IP}
    assert len({r["key"] for r in seen}) == 1
    [annotation] = [r["body"] for r in seen if r["kind"] == "grafana"]
    assert t0 <= annotation["time"] < annotation["timeEnd"] <= t1
    assert annotation["tags"] == [INST, "ganeti-live-migration", f"source:{N2}",
                                  f"target:{N1}"]
    [slack] = [r["body"] for r in seen if r["kind"] == "slack"]
    assert f"live migration of {INST}: {N2} → {N1}" in slack["text"]
    for node in lab.nodes:  # nothing left queued, no start record anywhere
        assert not list(node.host_path("/var/spool/hookpack").glob("outbox/*.json"))
        assert not list(node.host_path("/var/lib/hookpack").glob("announce/starts/*.json"))
    out = lab.run_on(N1, [VENV_HOOKPACK, "outbox", "list"], check=True).stdout
    assert out.strip().endswith("0 pending deliveries")
    compat.note(lab.version, "action.announce", "one Grafana annotation, Slack message and "
                "webhook call per live migration, from the master")

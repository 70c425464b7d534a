"""announce: hooks run through the emulator on the recorded migrate environments, real
local HTTP receivers (vm-testbed/vmtestbed/receivers.py), the real outbox on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmtestbed.receivers import GRAFANA_TOKEN, HMAC_KEY, SLACK_PATH, Receiver

from hookpack.cli import main as cli
from hookpack.emulator import run_hooks
from hookpack.hooksinstall import ENTRY_NAME
from hookpack.outbox import Outbox
from tests.helpers.entries import actions_entry

CAP = 0.5  # attempt_timeout in these tests


@pytest.fixture
def receivers():
    made = {kind: Receiver(kind) for kind in ("slack", "grafana", "webhook")}
    yield made
    for receiver in made.values():
        receiver.stop()


@pytest.fixture
def setup(tmp_path, write_config, receivers):
    """Secrets in root-only files, a config pointing at the receivers, hooks installed."""
    def make(node: str = "node1.example.test", extra: str = "", sinks=("slack", "grafana",
                                                                          "webhook")) -> Path:
        secrets = tmp_path / "secrets"
        secrets.mkdir(exist_ok=True)
        for name, value in (("slack_url", receivers["slack"].url),
                            ("grafana_token", GRAFANA_TOKEN),
                            ("webhook_url", receivers["webhook"].url), ("hmac", HMAC_KEY)):
            (secrets / name).write_text(value + "\n")
            (secrets / name).chmod(0o600)
        lines = [f'[node]\nfqdn = "{node}"\n', "[announce]", "enabled = true",
                 'allow_insecure_hosts = ["127.0.0.1"]', f"attempt_timeout = {CAP}",
                 "backoff_base = 0.0", "flush_timeout = 0.5"]
        if "slack" in sinks:
            lines.append(f'slack_webhook_url_file = "{secrets / "slack_url"}"')
        if "grafana" in sinks:
            lines += [f'grafana_url = "http://127.0.0.1:{receivers["grafana"].port}"',
                      f'grafana_token_file = "{secrets / "grafana_token"}"']
        if "webhook" in sinks:
            lines += [f'webhook_url_file = "{secrets / "webhook_url"}"',
                      f'webhook_hmac_key_file = "{secrets / "hmac"}"']
        overridden = {line.split("=")[0].strip() for line in extra.splitlines() if "=" in line}
        lines = [line for line in lines if line.split("=")[0].strip() not in overridden]
        config = write_config("\n".join(lines) + "\n" + extra)
        root = tmp_path / "hooks"
        subprocess.run([sys.executable, "-m", "hookpack", "hooks", "install", "--root",
                        str(root), "--entry-config", str(config)], check=True,
                       capture_output=True)
        return config
    return make


def hook(tmp_path: Path, sample, phase: str, node: str = "node1", **overrides: str):
    environ, _ = sample(f"instance-migrate-{phase}-{node}")
    environ = {**environ, **overrides}
    hpath = environ["GANETI_HOOKS_PATH"]
    start = time.monotonic()
    [result] = actions_entry(run_hooks(tmp_path / "hooks", hpath, phase, environ))
    return result, time.monotonic() - start


def migrate(tmp_path, sample, **overrides):
    pre, _ = hook(tmp_path, sample, "pre", **overrides)
    post, seconds = hook(tmp_path, sample, "post", **overrides)
    return pre, post, seconds


def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "spool_dir", tmp_path / "run_dir")


def flush(config: Path, capsys, *args: str) -> tuple[int, str]:
    code = cli(["outbox", "flush", "--config", str(config), *args])
    return code, capsys.readouterr().out


def applied(receivers) -> dict[str, int]:
    return {kind: len(r.applied) for kind, r in receivers.items()}


def received(receivers) -> dict[str, int]:
    return {kind: len(r.received) for kind, r in receivers.items()}


# -- the normal case -----------------------------------------------------------------

def test_live_migration_gives_one_region_annotation_one_message_one_webhook(
        tmp_path, sample, setup, receivers):
    setup()
    before = int(time.time() * 1000)
    pre, post, _ = migrate(tmp_path, sample)
    after = int(time.time() * 1000)
    assert pre.status == post.status == "success"
    assert "start recorded" in pre.output
    assert post.output.startswith("hookpack announce: inst2.example.test: changed: "
                                  "live-migration node1.example.test → node2.example.test: "
                                  "delivered to slack, grafana, webhook (instance-migrate/post")
    assert all(not r.invalid for r in receivers.values()), [r.invalid for r in receivers.values()]
    assert received(receivers) == {"slack": 1, "grafana": 1, "webhook": 1}
    [(gkey, annotation)] = receivers["grafana"].received
    assert set(annotation) == {"time", "timeEnd", "tags", "text"}
    assert before <= annotation["time"] <= annotation["timeEnd"] <= after
    assert annotation["tags"] == ["inst2.example.test", "ganeti-live-migration",
                                  "source:node1.example.test", "target:node2.example.test"]
    [(skey, message)] = receivers["slack"].received
    assert "live migration of inst2.example.test: node1.example.test → node2.example.test" \
        in message["text"]
    [(wkey, event)] = receivers["webhook"].received
    assert gkey == skey == wkey == event["id"]
    assert (event["type"], event["instance"], event["source"], event["target"]) == (
        "live-migration", "inst2.example.test", "node1.example.test", "node2.example.test")
    assert (event["start_ms"], event["end_ms"]) == (annotation["time"], annotation["timeEnd"])
    assert outbox(tmp_path).ids() == []
    assert not list((tmp_path / "state_dir/announce/starts").iterdir())
    # no secret ever reaches the job log
    for text in (pre.output, post.output):
        assert SLACK_PATH not in text and GRAFANA_TOKEN not in text and HMAC_KEY not in text


def test_nothing_is_sent_from_a_node_that_is_not_the_master(tmp_path, sample, setup,
                                                           receivers):
    setup(node="node2.example.test")
    pre, post, _ = migrate(tmp_path, sample, node="node2")
    assert (pre.status, pre.output, post.status, post.output) == ("success", "", "success", "")
    assert received(receivers) == {"slack": 0, "grafana": 0, "webhook": 0}
    assert not (tmp_path / "state_dir/announce").exists()
    assert outbox(tmp_path).ids() == []


def test_pre_phase_sends_nothing_and_only_records_the_start(tmp_path, sample, setup,
                                                            receivers):
    setup()
    pre, _ = hook(tmp_path, sample, "pre")
    assert pre.status == "success"
    assert received(receivers) == {"slack": 0, "grafana": 0, "webhook": 0}
    [record] = (tmp_path / "state_dir/announce/starts").iterdir()
    assert record.name == "inst2.example.test--instance-migrate.json"
    assert record.stat().st_mode & 0o077 == 0


def test_non_live_and_cleanup_runs_are_not_announced_by_default(tmp_path, sample, setup,
                                                                receivers):
    setup()
    _, post, _ = migrate(tmp_path, sample, GANETI_MIGRATE_LIVE="False")
    assert "skipped: migration not announced (migrations = 'live')" in post.output
    _, post, _ = migrate(tmp_path, sample, GANETI_MIGRATE_CLEANUP="True")
    assert "skipped: migration cleanup run" in post.output
    assert received(receivers) == {"slack": 0, "grafana": 0, "webhook": 0}


def test_all_migrations_tags_a_non_live_one_ganeti_migration(tmp_path, sample, setup,
                                                             receivers):
    setup(extra='migrations = "all"\n')
    _, post, _ = migrate(tmp_path, sample, GANETI_MIGRATE_LIVE="False")
    assert "delivered to slack, grafana, webhook" in post.output
    [(_, annotation)] = receivers["grafana"].received
    assert annotation["tags"][1] == "ganeti-migration"


def test_failover_announced_only_when_enabled(tmp_path, sample, setup, receivers):
    # No failover dump was recorded: the migrate dump with the failover hpath/opcode
    # (the variables announce reads, OLD_/NEW_PRIMARY, are the same for failover).
    failover = {"GANETI_HOOKS_PATH": "instance-failover",
                "GANETI_OP_CODE": "OP_INSTANCE_FAILOVER"}
    setup()
    _, post, _ = migrate(tmp_path, sample, **failover)
    assert "skipped: failover not announced" in post.output
    setup(extra="failovers = true\n")
    _, post, _ = migrate(tmp_path, sample, **failover)
    assert "failover node1.example.test → node2.example.test: delivered" in post.output
    [(_, annotation)] = receivers["grafana"].received
    assert annotation["tags"][1] == "ganeti-failover"
    assert "timeEnd" in annotation


def test_post_without_start_record_sends_a_point_annotation(tmp_path, sample, setup,
                                                            receivers):
    setup()
    post, _ = hook(tmp_path, sample, "post")
    assert "start unknown" in post.output
    [(_, annotation)] = receivers["grafana"].received
    assert "timeEnd" not in annotation and isinstance(annotation["time"], int)
    assert "unknown" in receivers["slack"].received[0][1]["text"]


# -- failures: nothing lost, hook bounded --------------------------------------------

@pytest.mark.parametrize("failure", ["error", "hang", "refuse"])
def test_failed_delivery_is_queued_and_flushed_once_the_receiver_recovers(
        tmp_path, sample, setup, receivers, capsys, failure):
    config = setup()
    for receiver in receivers.values():
        if failure == "refuse":
            receiver.refuse()
        else:
            receiver.mode = failure
    _, post, seconds = migrate(tmp_path, sample)
    assert post.status == "success"
    # loose bound: the cap plus Python start-up on a shared machine
    assert seconds < CAP + 1.5, f"hook took {seconds:.2f} s with a {CAP} s cap"
    assert "queued, 1 pending" in post.output
    assert outbox(tmp_path).count() == 1
    code = cli(["outbox", "list", "--config", str(config)])
    listing = capsys.readouterr().out
    assert code == 0 and "3 pending deliveries" in listing
    assert SLACK_PATH not in listing and GRAFANA_TOKEN not in listing
    # still down: flush fails, the event stays
    code, out = flush(config, capsys)
    assert code == 1 and "1 event pending" in out
    # recover
    for receiver in receivers.values():
        receiver.release.set()
        if failure == "refuse":
            receiver.start()
        receiver.mode = "ok"
    code, out = flush(config, capsys)
    assert code == 0, out
    assert "3 delivered, 0 failed" in out and "0 events pending" in out
    assert applied(receivers) == {"slack": 1, "grafana": 1, "webhook": 1}
    assert outbox(tmp_path).ids() == []
    code, out = flush(config, capsys)
    assert (code, received(receivers)) == (0, {"slack": 1, "grafana": 1, "webhook": 1})


def test_a_slow_receiver_that_got_the_request_is_deduplicated_by_key(
        tmp_path, sample, setup, receivers, capsys):
    config = setup()
    for receiver in receivers.values():
        receiver.mode = "record-then-hang"
    _, post, seconds = migrate(tmp_path, sample)
    assert "queued, 1 pending" in post.output and seconds < CAP + 1.5
    for receiver in receivers.values():
        receiver.release.set()
        receiver.mode = "ok"
    code, out = flush(config, capsys)
    assert code == 0, out
    # each receiver got the event twice (at-least-once), with one key: acted on once
    assert received(receivers) == {"slack": 2, "grafana": 2, "webhook": 2}
    assert applied(receivers) == {"slack": 1, "grafana": 1, "webhook": 1}
    for receiver in receivers.values():
        (k1, b1), (k2, b2) = receiver.received
        assert (k1, b1) == (k2, b2)


def test_many_migrations_while_down_all_arrive_exactly_once(tmp_path, sample, setup,
                                                            receivers, capsys):
    config = setup()
    receivers["grafana"].mode = "error"  # slack and webhook fine, grafana broken
    for _ in range(4):
        _, post, _ = migrate(tmp_path, sample)
        assert "delivered to slack, webhook; grafana: " in post.output
    assert outbox(tmp_path).count() == 4
    # a flush while still broken tries grafana once, defers the rest
    code, out = flush(config, capsys)
    assert code == 1 and "0 delivered, 1 failed, 3 deferred" in out
    receivers["grafana"].mode = "ok"
    code, out = flush(config, capsys)
    assert code == 0 and "4 delivered" in out
    assert applied(receivers) == {"slack": 4, "grafana": 4, "webhook": 4}
    assert received(receivers) == {"slack": 4, "grafana": 4, "webhook": 4}
    starts = sorted(body["time"] for _, body in receivers["grafana"].received)
    assert len(set(starts)) == 4


def test_backoff_keeps_a_failed_event_until_due(tmp_path, sample, setup, receivers, capsys):
    config = setup(extra="backoff_base = 600.0\n", sinks=("slack",))
    receivers["slack"].mode = "error"
    migrate(tmp_path, sample)
    receivers["slack"].mode = "ok"
    code, out = flush(config, capsys)
    assert (code, receivers["slack"].received) == (0, [])
    assert "0 delivered, 0 failed" in out and "1 event pending" in out
    [event] = outbox(tmp_path).ids()
    delivery = outbox(tmp_path).read(event)["deliveries"]["slack"]
    assert delivery["attempts"] == 1 and "HTTP 500" in delivery["last_error"]
    assert delivery["next_attempt_ms"] - delivery["last_attempt_ms"] >= 600_000
    code = cli(["outbox", "retry", event, "--config", str(config)])
    assert code == 0 and len(receivers["slack"].applied) == 1
    assert outbox(tmp_path).ids() == []


def test_flush_never_sends_an_event_a_hook_is_delivering(tmp_path, sample, setup, receivers,
                                                         capsys):
    config = setup(sinks=("slack",))
    receivers["slack"].mode = "error"
    migrate(tmp_path, sample)
    receivers["slack"].mode = "ok"
    ob = outbox(tmp_path)
    [event] = ob.ids()
    with ob.claim(event) as held:  # as the hook holds it during its attempt
        assert held is not None
        code, out = flush(config, capsys, "--force")
        assert f"busy      {event}" in out and receivers["slack"].received == []
    code, out = flush(config, capsys, "--force")
    assert code == 0 and len(receivers["slack"].received) == 1


def test_drop_discards_only_what_it_is_told(tmp_path, sample, setup, receivers, capsys):
    config = setup(sinks=("slack",))
    receivers["slack"].mode = "error"
    migrate(tmp_path, sample)
    migrate(tmp_path, sample)
    first, second = outbox(tmp_path).ids()
    assert cli(["outbox", "drop", first, "--config", str(config)]) == 0
    assert outbox(tmp_path).ids() == [second]
    assert cli(["outbox", "drop", "../etc/passwd", "--config", str(config)]) == 1
    assert "is not an id" in capsys.readouterr().err
    assert cli(["outbox", "drop", "--config", str(config)]) == 1


def test_hook_with_attempt_timeout_zero_only_queues(tmp_path, sample, setup, receivers):
    setup(extra="attempt_timeout = 0.0\n", sinks=("slack",))
    _, post, _ = migrate(tmp_path, sample)
    assert "queued, 1 pending" in post.output and receivers["slack"].received == []


# -- secrets and transport rules -------------------------------------------------------

def test_a_group_readable_secret_file_is_refused_and_the_event_kept(tmp_path, sample, setup,
                                                                    receivers, capsys):
    config = setup(sinks=("grafana",))
    (tmp_path / "secrets/grafana_token").chmod(0o640)
    _, post, _ = migrate(tmp_path, sample)
    assert "accessible by group or others" in post.output and "queued, 1 pending" in post.output
    assert receivers["grafana"].received == []
    (tmp_path / "secrets/grafana_token").chmod(0o600)
    code, _ = flush(config, capsys)
    assert code == 0 and len(receivers["grafana"].applied) == 1


def test_plain_http_to_a_host_not_allowed_is_refused(tmp_path, sample, setup, receivers,
                                                     capsys):
    config = setup(sinks=("slack",))
    text = config.read_text().replace('allow_insecure_hosts = ["127.0.0.1"]',
                                      "allow_insecure_hosts = []")
    config.write_text(text)
    _, post, _ = migrate(tmp_path, sample)
    assert "is plain http; use https" in post.output
    assert "http://127.0.0.1:" in post.output and SLACK_PATH not in post.output
    assert "/***" in post.output
    assert receivers["slack"].received == []


def test_stale_start_records_of_failed_migrations_are_removed(tmp_path, sample, setup,
                                                              receivers, capsys):
    config = setup(extra="start_max_age = 60.0\n")
    hook(tmp_path, sample, "pre")  # the migration fails: no post hook
    [record] = (tmp_path / "state_dir/announce/starts").iterdir()
    old = time.time() - 120
    os.utime(record, (old, old))
    _, out = flush(config, capsys)
    assert "removed stale start record inst2.example.test--instance-migrate" in out
    assert not record.exists()


def test_an_old_start_record_is_not_used_for_a_new_migration(tmp_path, sample, setup,
                                                             receivers):
    setup()
    hook(tmp_path, sample, "pre")
    record = tmp_path / "state_dir/announce/starts/inst2.example.test--instance-migrate.json"
    data = json.loads(record.read_text())
    data["source"] = "node3.example.test"  # left by a migration between other nodes
    record.write_text(json.dumps(data))
    post, _ = hook(tmp_path, sample, "post")
    assert "start unknown" in post.output


def test_entry_is_installed_for_migrate_and_failover(tmp_path, setup):
    setup()
    for d in ("instance-migrate-pre.d", "instance-migrate-post.d", "instance-failover-pre.d",
              "instance-failover-post.d"):
        assert (tmp_path / "hooks" / d / ENTRY_NAME).exists()


def test_an_unreadable_event_file_is_reported_and_the_others_still_flushed(
        tmp_path, sample, setup, receivers, capsys):
    config = setup(sinks=("slack",))
    receivers["slack"].mode = "error"
    migrate(tmp_path, sample)
    migrate(tmp_path, sample)
    first, second = outbox(tmp_path).ids()
    (tmp_path / "spool_dir/outbox" / f"{first}.json").write_text("{truncated")
    receivers["slack"].mode = "ok"
    code, out = flush(config, capsys, "--force")
    assert code == 1 and f"{first}: outbox event {first}: unreadable" in out
    assert f"delivered {second} slack" in out
    assert cli(["outbox", "list", "--config", str(config)]) == 0
    assert "unreadable" in capsys.readouterr().out
    assert outbox(tmp_path).ids() == [first]  # kept for the operator to look at

"""The outbox's promises against the real local receivers (vm-testbed/vmtestbed/receivers.py):
a permanent refusal is dead-lettered and visible, Retry-After is honoured, an event the
spool cannot hold (a full tmpfs made by the test) is logged whole and can be replayed."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time

import pytest

from hookpack.action import Paths
from hookpack.cli import main as cli
from hookpack.config import load_config
from hookpack.doctor import outbox_check
from hookpack.metrics import outbox_samples
from tests.actions.test_announce import applied, flush, migrate, outbox, received, receivers, setup  # noqa: F401 - fixtures, by name


def listing(config, capsys) -> str:
    assert cli(["outbox", "list", "--config", str(config)]) == 0
    return capsys.readouterr().out


def test_a_permanent_refusal_is_dead_lettered_kept_and_visible(
        tmp_path, sample, setup, receivers, capsys):  # noqa: F811
    config = setup(sinks=("slack", "webhook"))
    receivers["webhook"].mode = "reject"  # 404: e.g. the webhook was removed
    _, post, _ = migrate(tmp_path, sample)
    assert "delivered to slack; webhook: " in post.output and "HTTP 404" in post.output
    assert "dead-lettered for webhook (refused for good" in post.output
    [event] = outbox(tmp_path).ids()
    # never retried: neither by flush nor by flush --force
    for args in ((), ("--force",)):
        code, out = flush(config, capsys, *args)
        assert code == 0 and "0 delivered, 0 failed" in out and "1 event pending" in out
    assert receivers["webhook"].refused == 1
    # visible: outbox list, metrics, doctor
    out = listing(config, capsys)
    assert f"{event}  webhook" in out and "DEAD-LETTERED" in out and "HTTP 404" in out
    assert "0 pending deliveries, 1 dead-lettered" in out
    paths = Paths.from_config(load_config(config, required=True))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for s in outbox_samples(paths)}
    assert samples[("hookpack_outbox_dead_letters", (("sink", "webhook"),))] == 1
    assert ("hookpack_outbox_pending_deliveries", (("sink", "webhook"),)) not in samples
    check = outbox_check(paths)
    assert check.status == "warn" and "1 dead-lettered delivery (refused for good)" in \
        check.message and "HTTP 404" in check.message
    # the operator fixes the receiver and retries that event: delivered, gone
    receivers["webhook"].mode = "ok"
    assert cli(["outbox", "retry", event, "--config", str(config)]) == 0
    assert applied(receivers) == {"slack": 1, "grafana": 0, "webhook": 1}
    assert outbox(tmp_path).ids() == []


def test_a_refusal_in_flush_dead_letters_and_other_events_still_go(
        tmp_path, sample, setup, receivers, capsys):  # noqa: F811
    config = setup(sinks=("webhook",))
    receivers["webhook"].mode = "error"
    migrate(tmp_path, sample)
    migrate(tmp_path, sample)
    receivers["webhook"].mode = "reject"
    code, out = flush(config, capsys)
    # a refusal is about this event, not the receiver: the second event is tried too
    assert code == 1 and out.count("dead      ") == 2 and "2 dead-lettered" in out
    assert receivers["webhook"].refused == 2


def test_retry_after_is_honoured(tmp_path, sample, setup, receivers, capsys):  # noqa: F811
    config = setup(sinks=("grafana",))  # backoff_base = 0: only Retry-After delays
    receivers["grafana"].mode = "throttle"
    receivers["grafana"].retry_after = "2"
    _, post, _ = migrate(tmp_path, sample)
    assert "HTTP 429" in post.output and "queued" in post.output
    [event] = outbox(tmp_path).ids()
    delivery = outbox(tmp_path).read(event)["deliveries"]["grafana"]
    assert delivery["next_attempt_ms"] - delivery["last_attempt_ms"] == 2000
    receivers["grafana"].mode = "ok"
    _, out = flush(config, capsys)  # too early: not sent
    assert "0 delivered" in out and received(receivers)["grafana"] == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and outbox(tmp_path).ids():
        time.sleep(0.3)
        flush(config, capsys)
    assert applied(receivers)["grafana"] == 1 and outbox(tmp_path).ids() == []


@pytest.fixture
def full_spool(tmp_path):
    """The spool on a 64 KiB tmpfs mounted by the test and filled to the last byte."""
    spool = tmp_path / "spool_dir"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "hookpack-test",
                    str(spool)], check=True)
    try:
        (spool / "outbox").mkdir()
        fd = os.open(spool / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        yield spool
    finally:
        subprocess.run(["umount", str(spool)], check=True)


@pytest.mark.slow
def test_an_event_the_full_spool_cannot_hold_is_logged_whole_and_replayed(
        tmp_path, sample, setup, receivers, capsys, full_spool):  # noqa: F811
    config = setup(sinks=("slack", "grafana", "webhook"))
    _, post, _ = migrate(tmp_path, sample)
    assert post.status == "success"  # a post hook: logged, Ganeti goes on
    lines = post.output.splitlines()
    unqueued = "hookpack announce: unqueued event ("
    [action] = [line for line in lines if line.startswith("hookpack announce:")
                and not line.startswith(unqueued)]
    assert "failed: " in action and "cannot queue the event" in action
    assert "No space left on device" in action and "not sent" in action
    [logged] = [line for line in lines if line.startswith(unqueued)]
    blob = re.sub(r"^.*?: (\{)", r"\1", logged, count=1)
    data = json.loads(blob)  # the whole event, not cut at the log line limit
    assert len(logged) > 600 and set(data["deliveries"]) == {"slack", "grafana", "webhook"}
    assert outbox(tmp_path).ids() == [] and received(receivers) == {
        "slack": 0, "grafana": 0, "webhook": 0}
    # space again: the operator replays the logged line, the flush delivers it once
    (full_spool / "filler").unlink()
    assert cli(["outbox", "replay", blob, "--config", str(config)]) == 0
    assert f"queued    {data['id']}" in capsys.readouterr().out
    code, out = flush(config, capsys)
    assert code == 0 and "3 delivered" in out, out
    assert applied(receivers) == {"slack": 1, "grafana": 1, "webhook": 1}
    key = data["key"]
    assert [k for k, _ in receivers["webhook"].received] == [key]
    assert cli(["outbox", "replay", blob, "--config", str(config)]) == 0  # twice: the
    flush(config, capsys)  # same key: a deduplicating receiver acts on it once
    assert applied(receivers)["webhook"] == 1

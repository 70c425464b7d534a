"""Metrics from real hook runs (emulator), parsed with Prometheus' own text parser."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from hookpack.emulator import run_hooks
from hookpack.metrics import Sample, render
from tests.unit.test_hook_runtime import _custom_entry


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_hook_runs_become_metrics(tmp_path, sample, write_config):
    environ, _ = sample("instance-start-post-node1")
    config = write_config()
    _custom_entry(tmp_path / "hooks" / "instance-start-post.d", "50-custom", config,
                  "tests.helpers.act_ok:post,tests.helpers.act_boom:post")
    for _ in range(3):
        run_hooks(tmp_path / "hooks", "instance-start", "post", environ)
    out = subprocess.run([sys.executable, "-m", "hookpack", "metrics", "--config", str(config)],
                         capture_output=True, text=True, check=True).stdout
    families = _families(out)
    runs = {(s.labels["action"], s.labels["outcome"]): s.value
            for s in families["hookpack_action_runs"]}
    assert runs == {("act_ok", "changed"): 3, ("act_boom", "failed"): 3}
    failures = {s.labels["action"]: s.value for s in families["hookpack_action_failures"]}
    assert failures == {"act_ok": 0, "act_boom": 3}
    assert {s.name for s in families["hookpack_action_duration_seconds"]} == {
        "hookpack_action_duration_seconds_sum", "hookpack_action_duration_seconds_count"}


def test_write_is_atomic_and_labels_are_escaped(tmp_path):
    text = render([Sample("x_total", 2, {"instance": 'a"b\\c\nd'}, "help \\ me", "counter"),
                   Sample("y", 0.25)])
    target = tmp_path / "hookpack.prom"
    from hookpack.metrics import write_textfile
    write_textfile(target, text)
    families = _families(target.read_text())
    assert families["x"][0].labels["instance"] == 'a"b\\c\nd'
    assert families["y"][0].value == 0.25
    assert [p.name for p in tmp_path.iterdir()] == ["hookpack.prom"]


def _outbox_event(outbox, created_ms: int, key: str, deliveries: dict) -> str:
    from hookpack.outbox import event_id

    event = event_id(created_ms, key)
    outbox.write(event, {"subject": "web1.example.test", "event": {"kind": "migrate"},
                         "deliveries": deliveries}, new=True)
    return event


def test_outbox_backlog_and_oldest_age(tmp_path, write_config):
    from hookpack.action import Paths
    from hookpack.config import load_config
    from hookpack.metrics import outbox_samples
    from hookpack.outbox import Outbox

    config = write_config()
    paths = Paths.from_config(load_config(config, required=True))
    empty = {s.name: s.value for s in outbox_samples(paths, now_ms=10_000_000)}
    assert empty == {"hookpack_outbox_events": 0, "hookpack_outbox_unreadable_events": 0,
                     "hookpack_outbox_oldest_event_age_seconds": 0}
    outbox = Outbox(paths.spool_dir, paths.run_dir)
    _outbox_event(outbox, 1_000_000, "a" * 16, {"slack": {"attempts": 2},
                                                "webhook": {"done_ms": 1_000_500}})
    _outbox_event(outbox, 4_000_000, "b" * 16, {"slack": {}, "grafana": {}})
    (outbox.dir / f"{'0' * 12}5-{'c' * 16}.json").write_text("not json")
    samples = outbox_samples(paths, now_ms=10_000_000)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert values == {
        ("hookpack_outbox_events", ()): 3,
        ("hookpack_outbox_unreadable_events", ()): 1,
        ("hookpack_outbox_oldest_event_age_seconds", ()): (10_000_000 - 5) / 1000,
        ("hookpack_outbox_pending_deliveries", (("sink", "slack"),)): 2,
        ("hookpack_outbox_pending_deliveries", (("sink", "grafana"),)): 1,
    }
    # through the CLI, parsed by Prometheus' parser, typed as documented
    out = subprocess.run([sys.executable, "-m", "hookpack", "metrics", "--config", str(config)],
                         capture_output=True, text=True, check=True).stdout
    families = {f.name: f for f in text_string_to_metric_families(out)}
    for name in ("hookpack_outbox_events", "hookpack_outbox_oldest_event_age_seconds",
                 "hookpack_outbox_pending_deliveries", "hookpack_outbox_unreadable_events"):
        assert families[name].type == "gauge" and families[name].documentation, name
    assert families["hookpack_outbox_events"].samples[0].value == 3
    # the oldest event's id says it was created at ms 5 of the epoch
    assert families["hookpack_outbox_oldest_event_age_seconds"].samples[0].value > 10**9

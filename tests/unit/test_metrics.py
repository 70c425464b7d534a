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

"""Prometheus conventions of `hookpack metrics`, checked by Prometheus' own promtool."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from hookpack import __version__
from hookpack.metrics import Sample, render
from tests.helpers.promtool import check_with_promtool, promtool_check


def _metrics(config) -> str:
    return subprocess.run([sys.executable, "-m", "hookpack", "metrics", "--config", str(config)],
                          capture_output=True, text=True, check=True).stdout


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_promtool_passes_and_errors_and_build_info_are_always_there(write_config):
    # shaping enabled without an uplink: its metrics cannot be read -> errors 1
    text = _metrics(write_config("[shaping]\nenabled = true\n"))
    check_with_promtool(text)
    families = _families(text)
    errors = {s.labels["action"]: s.value for s in families["hookpack_metrics_errors"].samples}
    assert errors == {"core": 0, "shaping": 1}
    info = families["hookpack_build_info"].samples
    assert [(s.name, s.labels["version"], s.value) for s in info] == [
        ("hookpack_build_info", __version__, 1)]


def test_errors_series_exists_with_nothing_wrong(write_config):
    families = _families(_metrics(write_config()))
    errors = {s.labels["action"]: s.value for s in families["hookpack_metrics_errors"].samples}
    assert errors["core"] == 0 and set(errors.values()) == {0}


def test_no_metric_uses_prometheus_own_instance_label(write_config):
    text = _metrics(write_config("[shaping]\nenabled = true\n"))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert "instance" not in sample.labels and "job" not in sample.labels, sample


def test_promtool_is_a_real_check():
    # a counter without _total is what promtool's linter rejects
    proc = promtool_check(render([Sample("hookpack_bad", 1, {}, "bad", "counter")]))
    assert proc.returncode != 0 or proc.stdout.strip(), proc

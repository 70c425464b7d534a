"""`hookpack doctor`'s unit checks (hookpack/unitcheck.py), decided from config + ssconf.

These use a FAKE ``systemctl`` (a script printing ``systemctl show`` blocks from a JSON
file) and a stand-in for /run/systemd/system: this machine does not run systemd as
PID 1. The real check runs in tests/systemd_guest (Debian 12 with systemd as PID 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hookpack.config import load_config
from hookpack.unitcheck import ALL_UNITS, check_units, expected_units

FAKE_SYSTEMCTL = """#!/usr/bin/python3
# FAKE systemctl for tests: `show --property=... -- UNIT...` from a JSON file.
import json, sys
states = json.load(open(sys.argv[0] + ".json"))
units = sys.argv[sys.argv.index("--") + 1:]
blocks = []
for u in units:
    s = states.get(u, {"LoadState": "not-found", "UnitFileState": "", "ActiveState": "inactive",
                       "SubState": "dead"})
    blocks.append("\\n".join([f"Id={u}"] + [f"{k}={v}" for k, v in s.items()]))
print("\\n\\n".join(blocks))
"""


def good(active: str = "active", sub: str = "running") -> dict[str, str]:
    return {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": active,
            "SubState": sub}


@pytest.fixture
def node(tmp_path):
    data = tmp_path / "ganeti"
    data.mkdir()
    (data / "ssconf_master_node").write_text("node1.example.test\n")
    (data / "ssconf_master_candidates").write_text("node1.example.test\nnode2.example.test\n")
    run_dir = tmp_path / "run-systemd"
    run_dir.mkdir()
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL)
    systemctl.chmod(0o755)

    def setup(fqdn: str, states: dict[str, dict[str, str]], shaping: bool = True,
              announce: bool = False) -> list[tuple[str, str, str]]:
        cfg_file = tmp_path / "hookpack.toml"
        cfg_file.write_text(
            f'[node]\nfqdn = "{fqdn}"\n[paths]\nganeti_data_dir = "{data}"\n'
            f'[shaping]\nenabled = {str(shaping).lower()}\nuplink = "eth0"\n'
            f"reconcile_interval = 60\n[announce]\nenabled = {str(announce).lower()}\n")
        Path(f"{systemctl}.json").write_text(json.dumps(states))
        verdicts = check_units(load_config(cfg_file), systemctl=str(systemctl),
                               run_dir=run_dir)
        return [(v.unit, v.status, v.message) for v in verdicts]
    return setup


def test_master_candidate_with_everything_running_passes(node):
    states = {"hookpack-shaping.service": good("active", "exited"),
              "hookpack-shaping-reconcile.timer": good("active", "waiting"),
              "hookpack-jobwatch.service": good()}
    verdicts = node("node2.example.test", states)
    assert [v[1] for v in verdicts] == ["pass", "pass", "pass"], verdicts
    assert {v[0] for v in verdicts} == set(states)


def test_missing_disabled_and_failed_units_fail_with_the_reason(node):
    states = {"hookpack-shaping.service": {**good(), "UnitFileState": "disabled"},
              "hookpack-jobwatch.service": good("failed", "failed")}
    verdicts = {v[0]: v for v in node("node1.example.test", states)}
    assert verdicts["hookpack-shaping.service"][1:] == ("fail", "disabled (shaping is enabled)")
    assert verdicts["hookpack-shaping-reconcile.timer"][1] == "fail"
    assert "not installed" in verdicts["hookpack-shaping-reconcile.timer"][2]
    assert verdicts["hookpack-jobwatch.service"][1:] == (
        "fail", "failed (this node is a master candidate)")


def test_jobwatch_is_not_expected_on_a_node_that_is_no_candidate(node):
    verdicts = node("node3.example.test", {}, shaping=False)
    assert verdicts == [("units", "pass", "none expected on this node, none found")]


def test_outbox_timer_expected_with_announce(node):
    verdicts = {v[0]: v[1] for v in node("node3.example.test", {}, shaping=False,
                                         announce=True)}
    assert verdicts == {"hookpack-outbox-flush.timer": "fail"}


def test_no_systemd_no_check(tmp_path):
    cfg = load_config(tmp_path / "none.toml")
    (verdict,) = check_units(cfg, run_dir=tmp_path / "absent")
    assert verdict.status == "pass" and "not a systemd host" in verdict.message


def test_expected_units_follow_the_config_and_ssconf(tmp_path):
    (tmp_path / "ssconf_master_node").write_text("a.example.test\n")
    cfg_file = tmp_path / "h.toml"
    cfg_file.write_text(f'[paths]\nganeti_data_dir = "{tmp_path}"\n'
                        '[shaping]\nenabled = true\nuplink = "e"\nreconcile_interval = 0\n')
    want = expected_units(load_config(cfg_file), fqdn="A.example.test.")
    assert sorted(want) == ["hookpack-jobwatch.service", "hookpack-shaping.service"]
    assert set(want) <= set(ALL_UNITS)

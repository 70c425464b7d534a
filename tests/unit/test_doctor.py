"""Each core doctor check, in a failing and a passing state, on real files."""

from __future__ import annotations

import subprocess
import sys

from hookpack.config import load_config
from hookpack.doctor import FAIL, PASS, WARN, run_checks
from hookpack.hooksinstall import install


def _doctor(config_path):
    return {c.name: c for c in run_checks(load_config(config_path, required=True))}


def test_fresh_node_fails_with_what_to_do(tmp_path, write_config):
    checks = _doctor(write_config())
    assert checks["ganeti"].status == FAIL and "not found" in checks["ganeti"].message
    assert checks["hooks"].status == FAIL
    assert checks["hooks"].fix.startswith("run `hookpack hooks install --root ")


def test_ready_node_passes(tmp_path, write_config):
    config = write_config()
    (tmp_path / "ganeti_data_dir").mkdir()
    (tmp_path / "ganeti_data_dir/ssconf_release_version").write_text("3.0.2\n")
    install(tmp_path / "hooks_dir", python=sys.executable)
    checks = _doctor(config)
    assert {name: c.status for name, c in checks.items()} == {
        "ganeti": PASS, "hooks": PASS, "config-mode": PASS, "config": PASS}
    assert checks["ganeti"].message == "Ganeti 3.0.2"


def test_entry_with_missing_interpreter_or_not_executable_fails(tmp_path, write_config):
    config = write_config()
    install(tmp_path / "hooks_dir", python="/nonexistent/python")
    assert _doctor(config)["hooks"].status == FAIL
    install(tmp_path / "hooks_dir", python=sys.executable)
    (tmp_path / "hooks_dir/disk-grow-post.d/50-hookpack").chmod(0o644)
    check = _doctor(config)["hooks"]
    assert check.status == FAIL and "not executable" in check.message


def test_misnamed_operator_script_is_a_warning(tmp_path, write_config):
    config = write_config()
    install(tmp_path / "hooks_dir", python=sys.executable)
    (tmp_path / "hooks_dir/instance-start-post.d/10-notify.sh").write_text("#!/bin/sh\n")
    check = _doctor(config)["hook-names"]
    assert check.status == WARN and "instance-start-post.d/10-notify.sh" in check.message


def test_group_writable_config_fails_and_invalid_section_fails(tmp_path, write_config):
    config = write_config("[record]\nenabled = 'yes'\n", mode=0o664)
    checks = run_checks(load_config(config, required=True))
    by_name = {}
    for check in checks:
        by_name.setdefault(check.name, []).append(check)
    assert by_name["config-mode"][0].status == FAIL
    assert any(c.status == FAIL and "record.enabled" in c.message for c in by_name["config"])


def test_doctor_command_exit_codes(tmp_path, write_config):
    config = write_config()
    failing = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config", str(config)],
                             capture_output=True, text=True)
    assert failing.returncode == 1 and "FAIL ganeti:" in failing.stdout
    (tmp_path / "ganeti_data_dir").mkdir()
    (tmp_path / "ganeti_data_dir/ssconf_release_version").write_text("3.0.2\n")
    install(tmp_path / "hooks_dir", python=sys.executable)
    passing = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--config", str(config)],
                             capture_output=True, text=True)
    assert passing.returncode == 0, passing.stdout

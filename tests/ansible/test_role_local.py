"""The Ansible role run for real against this machine (connection local), every path
pointed into a temp dir: install, idempotence, check mode, absent, unit files.

The role's run against the two nodes of the real Ganeti lab over SSH is in
tests/ganeti/test_ansible_lab.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hookpack.roles import system_fqdn

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("node")
    hooks = root / "hooks"
    (hooks / "instance-start-post.d").mkdir(parents=True)
    (hooks / "instance-start-post.d" / "10-operator").write_text("#!/bin/sh\necho mine\n")
    (hooks / "instance-start-post.d" / "10-operator").chmod(0o755)
    ganeti = root / "ganeti"
    ganeti.mkdir()
    (ganeti / "ssconf_master_node").write_text(socket.getfqdn() + "\n")
    (ganeti / "ssconf_release_version").write_text("3.0.2\n")
    (ganeti / "ssconf_node_list").write_text(system_fqdn() + "\n")  # doctor: node-name
    variables = {
        # this machine is the test host: the role must not change its system Python
        # (the default, deb, runs in the Debian 12 systemd guest: tests/systemd_guest)
        "hookpack_install_method": "venv",
        "hookpack_home": str(root / "opt/hookpack"),
        "hookpack_bin_link": str(root / "bin/hookpack"),
        "hookpack_hooks_dir": str(hooks),
        "hookpack_config_dir": str(root / "etc"),
        "hookpack_systemd_dir": str(root / "systemd"),
        "hookpack_ganeti_data_dir": str(ganeti),
        "hookpack_wheel_build_dir": str(root / "build"),
        "hookpack_secrets": {"webhook": "s3cret-value-never-logged"},
        "hookpack_config": {
            "log": {"syslog": False},
            "paths": {"hooks_dir": str(hooks), "ganeti_data_dir": str(ganeti),
                      "state_dir": str(root / "state"), "run_dir": str(root / "run"),
                      "spool_dir": str(root / "spool")},
            "record": {"enabled": True, "path": str(root / "record.jsonl")},
        },
    }
    (root / "bin").mkdir()
    (root / "systemd").mkdir()  # exists on every node
    (root / "vars.json").write_text(json.dumps(variables))
    before = _tree(hooks)
    yield root, variables, before
    shutil.rmtree(root / "opt", ignore_errors=True)


def play(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    inventory = root / "inventory.ini"
    inventory.write_text("[ganeti_nodes]\nlocalhost ansible_connection=local "
                         f"ansible_python_interpreter={sys.executable}\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "PATH": f"{BIN}:{os.environ['PATH']}",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "False"}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                           str(ANSIBLE / "site.yml"), "-e", f"@{root / 'vars.json'}", *extra],
                          capture_output=True, text=True, env=env, timeout=600)


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+(.*)", result.stdout)
    assert match, result.stdout[-3000:] + result.stderr[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def test_install_then_idempotent_then_check_mode(node):
    root, variables, _ = node
    first = play(root)
    assert first.returncode == 0, first.stdout[-4000:]
    assert recap(first)["changed"] > 0
    assert "s3cret-value-never-logged" not in first.stdout + first.stderr
    second = play(root)
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second)["changed"] == 0, second.stdout[-4000:]
    check = play(root, "--check")
    assert check.returncode == 0 and recap(check)["changed"] == 0, check.stdout[-4000:]

    hooks = Path(variables["hookpack_hooks_dir"])
    entry = hooks / "instance-start-post.d" / "50-hookpack"
    home = Path(variables["hookpack_home"])
    assert f"hp_python='{home}/current/venv/bin/python'" in entry.read_text()
    [build] = (home / "versions").iterdir()
    assert os.readlink(home / "current") == f"versions/{build.name}"
    assert (build / ".hookpack-complete").exists()
    secret = Path(variables["hookpack_config_dir"]) / "secrets" / "webhook"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert "doctor" in first.stdout and "PASS hooks" in first.stdout


def test_installed_hooks_run_under_ganetis_rules(node):
    from hookpack.emulator import run_hooks
    from tests.conftest import load_sample, sample_files

    _root, variables, _ = node
    environ, _ = load_sample(next(p for p in sample_files() if p.stem ==
                                  "instance-start-post-node1"))
    results = run_hooks(Path(variables["hookpack_hooks_dir"]), "instance-start", "post", environ)
    assert [r.status for r in results] == ["success", "success", "success"]
    assert results[1].output.startswith("hookpack record: inst1.example.test: changed")
    # the global hooks' entry sorts last; without global-post.d scripts it says nothing
    assert (results[2].name, results[2].output) == (
        "instance-start-post.d/99-hookpack-global", "")


def test_units_pass_systemd_analyze_verify(node):
    _root, variables, _ = node
    units = sorted(Path(variables["hookpack_systemd_dir"]).glob("hookpack-*"))
    assert [u.name for u in units] == ["hookpack-hook-server.service",
                                       "hookpack-jobwatch.service",
                                       "hookpack-outbox-flush.service",
                                       "hookpack-outbox-flush.timer"]
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)],
                            capture_output=True, text=True)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "hookpack" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_role_upgrade_while_hooks_run_in_a_loop(node, tmp_path):
    """The role's install tasks switch builds atomically: hooks looping during the
    upgrade all succeed, each on the old or the new build (record carries the version)."""
    import threading

    from hookpack.emulator import run_hooks
    from tests.conftest import SAMPLES, load_sample
    from tests.unit.test_atomic_upgrade import _wheel

    root, variables, _ = node
    new = _wheel(tmp_path, "0.1.1.dev9")
    records = Path(variables["hookpack_config"]["record"]["path"])
    records.unlink(missing_ok=True)
    environ, _ = load_sample(SAMPLES / "instance-start-post-node1.env")
    hooks = Path(variables["hookpack_hooks_dir"])
    results, stop = [], threading.Event()

    def loop() -> None:
        while not stop.is_set():
            results.extend(r for r in run_hooks(hooks, "instance-start", "post", environ)
                           if r.name.endswith("50-hookpack"))

    runner = threading.Thread(target=loop)
    runner.start()
    try:
        upgrade = play(root, "-e", f"hookpack_wheel={new}")
        switched = len(results)
        while len(results) < switched + 10:
            stop.wait(0.05)
    finally:
        stop.set()
        runner.join()
    assert upgrade.returncode == 0, upgrade.stdout[-4000:]
    failed = [r for r in results if r.status != "success"
              or not r.output.startswith("hookpack record: ")]
    versions = [json.loads(line)["version"] for line in records.read_text().splitlines()]
    print(f"{len(results)} runs during the role's upgrade, {len(failed)} failed; versions: "
          f"{ {v: versions.count(v) for v in sorted(set(versions))} }")
    assert failed == [] and len(versions) == len(results)
    assert set(versions) == {"0.1.0", "0.1.1.dev9"}
    assert versions == sorted(versions, key=lambda v: v != "0.1.0")
    home = Path(variables["hookpack_home"])
    assert os.readlink(home / "current").startswith("versions/0.1.1.dev9-")
    assert len(list((home / "versions").iterdir())) == 2  # the previous build is kept


def test_config_tag_pushes_the_config_alone_and_notifies_the_handlers(node, tmp_path):
    root, variables, _ = node
    changed = {"hookpack_config": {**variables["hookpack_config"], "log": {
        "syslog": False, "syslog_facility": "local3"}}}
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    config = Path(variables["hookpack_config_dir"]) / "hookpack.toml"
    assert 'syslog_facility = "local3"' not in config.read_text()
    result = play(root, "-e", f"@{tmp_path / 'changed.json'}", "--tags", "hookpack_config")
    assert result.returncode == 0, result.stdout[-4000:]
    assert recap(result)["changed"] == 1, result.stdout[-4000:]
    assert 'syslog_facility = "local3"' in config.read_text()
    tasks = re.findall(r"^TASK \[hookpack : (.*?)\]", result.stdout, re.MULTILINE)
    assert "Write the config" in tasks and "Find Ganeti's master (ssconf)" in tasks
    assert not {"Install the units", "Install the hook entries (only where they differ)",
                "Run hookpack doctor"} & set(tasks), tasks
    handlers = re.findall(r"^RUNNING HANDLER \[hookpack : (.*?)\]", result.stdout, re.MULTILINE)
    assert {"Restart the job watcher", "Restart the hook server",
            "Re-apply shaping"} <= set(handlers), result.stdout
    # put the config back as the other tests left it
    assert play(root, "--tags", "hookpack_config").returncode == 0
    assert 'syslog_facility = "local3"' not in config.read_text()


def test_absent_removes_what_the_role_created_and_nothing_else(node):
    root, variables, before = node
    result = play(root, "-e", "hookpack_state=absent")
    assert result.returncode == 0, result.stdout[-4000:]
    assert _tree(Path(variables["hookpack_hooks_dir"])) == before
    for path in ("hookpack_home", "hookpack_bin_link", "hookpack_config_dir"):
        assert not Path(variables[path]).exists(), path
    assert not list(Path(variables["hookpack_systemd_dir"]).glob("hookpack-*"))
    again = play(root, "-e", "hookpack_state=absent")
    assert recap(again)["changed"] == 0, again.stdout[-3000:]


def test_ansible_lint_production_profile():
    result = subprocess.run([str(BIN / "ansible-lint")], cwd=ANSIBLE, capture_output=True,
                            text=True, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr

"""The installed entry scripts, run exactly as Ganeti's node daemon runs them (emulator)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from hookpack.emulator import pre_aborts
from hookpack.emulator import run_hooks as _run_hooks
from hookpack.hooksinstall import ENTRY_NAME

REPO = Path(__file__).resolve().parents[2]


def run_hooks(*args, **kwargs):
    """The emulator's results without the global hooks' entries (their own tests:
    test_global_hooks.py); with no global-*.d scripts they do nothing."""
    return [r for r in _run_hooks(*args, **kwargs) if not r.name.endswith("hookpack-global")]


def _record_config(tmp_path: Path, node: str) -> str:
    return (f'[node]\nfqdn = "{node}"\n\n[record]\nenabled = true\n'
            f'path = "{tmp_path}/record.jsonl"\n')


def _custom_entry(directory: Path, name: str, config: Path, actions: str) -> None:
    """An executable hook that dispatches test actions (tests/helpers/act_*.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    script.write_text(
        f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.helpers.custom_hook import main\n"
        f"sys.argv = ['x', {str(config)!r}, {actions!r}]\nsys.exit(main())\n")
    script.chmod(0o755)


def test_record_action_runs_with_roles_from_the_real_environment(hooks, sample, tmp_path):
    environ, node = sample("instance-migrate-post-node2")
    root = hooks(_record_config(tmp_path, node))
    results = run_hooks(root, "instance-migrate", "post", environ)
    assert [(r.name, r.status) for r in results] == [
        (f"instance-migrate-post.d/{ENTRY_NAME}", "success")]
    lines = results[0].output.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("hookpack record: inst2.example.test: changed: recorded to")
    assert "(instance-migrate/post, 1 change, " in lines[0]
    record = json.loads((tmp_path / "record.jsonl").read_text())
    assert record["roles"] == ["host", "target"]
    assert (record["node"], record["hpath"], record["phase"]) == (node, "instance-migrate",
                                                                  "post")


def test_nothing_enabled_means_no_output_and_success(hooks, sample):
    environ, _ = sample("disk-grow-post-node1")
    results = run_hooks(hooks(), "disk-grow", "post", environ)
    assert [(r.status, r.output) for r in results] == [("success", "")]


def test_scripts_run_sorted_named_and_executable_only(hooks, sample, tmp_path):
    environ, node = sample("instance-start-pre-node1")
    root = hooks(_record_config(tmp_path, node))
    directory = root / "instance-start-pre.d"
    trace = tmp_path / "trace"
    for name, executable in (("10-first", True), ("90-last", True), ("70-noexec", False),
                             ("80-bad.name", True), (".hidden", True)):
        script = directory / name
        script.write_text(f"#!/bin/sh\necho {name} >> {trace}\n")
        script.chmod(0o755 if executable else 0o644)
    results = run_hooks(root, "instance-start", "pre", environ)
    assert [(r.name.split("/")[1], r.status) for r in results] == [
        ("10-first", "success"), (ENTRY_NAME, "success"), ("70-noexec", "skip"),
        ("80-bad.name", "skip"), ("90-last", "success")]
    assert trace.read_text().split() == ["10-first", "90-last"]


def test_hooks_see_a_cleared_environment_cwd_root_and_closed_stdin(tmp_path, sample,
                                                                   monkeypatch):
    monkeypatch.setenv("SECRET_FROM_CALLER", "leak")
    environ, _ = sample("instance-start-pre-node1")
    environ = {**environ, "SECRET_FROM_CALLER": "leak"}
    directory = tmp_path / "hooks" / "instance-start-pre.d"
    directory.mkdir(parents=True)
    probe = directory / "10-probe"
    probe.write_text("#!/bin/sh\npwd\nread line && echo got-input || echo eof\nenv | sort\n")
    probe.chmod(0o755)
    [result] = run_hooks(tmp_path / "hooks", "instance-start", "pre", environ)
    lines = result.output.splitlines()
    assert lines[:2] == ["/", "eof"]
    names = {line.split("=", 1)[0] for line in lines[2:]}
    assert "SECRET_FROM_CALLER" not in names
    assert "PATH=/sbin:/bin:/usr/sbin:/usr/bin" in lines
    assert all(n.startswith("GANETI_") or n in ("PATH", "PWD", "SHLVL", "_") for n in names)


def test_policy_veto_aborts_the_pre_phase_with_one_clear_line(hooks, sample, tmp_path):
    environ, _ = sample("instance-add-post-node1")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ.update({"GANETI_HOOKS_PHASE": "pre", "GANETI_INSTANCE_NAME": "bad_name.example"})
    root = hooks('[node]\nfqdn = "node1.example.test"\n\n[policy]\nenabled = true\n'
                 "name_pattern = '^inst[0-9]+\\.example\\.test$'\n")
    results = run_hooks(root, "instance-add", "pre", environ)
    assert pre_aborts(results)
    assert results[0].exit_code == 1
    assert results[0].output.splitlines() == [
        "hookpack policy: bad_name.example: veto: instance name 'bad_name.example' does not "
        "match the site rule '^inst[0-9]+\\.example\\.test$' (instance-add/pre, 0 changes, "
        + results[0].output.split("0 changes, ")[1]]
    environ["GANETI_INSTANCE_NAME"] = "inst9.example.test"
    assert not pre_aborts(run_hooks(root, "instance-add", "pre", environ))


def test_policy_runs_on_the_master_only(hooks, sample):
    environ, _ = sample("instance-add-post-node2")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ.update({"GANETI_HOOKS_PHASE": "pre", "GANETI_INSTANCE_NAME": "bad name"})
    root = hooks('[node]\nfqdn = "node2.example.test"\n\n[policy]\nenabled = true\n'
                 'name_pattern = "^inst.*$"\n')
    [result] = run_hooks(root, "instance-add", "pre", environ)
    assert (result.status, result.output) == ("success", "")


@pytest.mark.parametrize(("phase", "fail_closed", "code"), [
    ("pre", False, 0), ("pre", True, 1), ("post", False, 0)])
def test_hanging_action_is_abandoned_within_the_deadline(tmp_path, sample, write_config,
                                                         phase, fail_closed, code):
    environ, _ = sample(f"instance-start-{phase}-node1")
    config = write_config(f"[hook]\ndeadline = 1.0\npre_fail_closed = {str(fail_closed).lower()}")
    directory = tmp_path / "hooks" / f"instance-start-{phase}.d"
    _custom_entry(directory, "50-custom", config,
                  f"tests.helpers.act_ok:{phase},tests.helpers.act_hang:{phase},"
                  f"tests.helpers.act_ok:{phase}")
    start = time.monotonic()
    [result] = run_hooks(tmp_path / "hooks", "instance-start", phase, environ)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 1.0, f"hook took {elapsed:.2f} s with a 1 s deadline"
    lines = result.output.splitlines()
    assert lines[0].startswith("hookpack act_ok: inst1.example.test: changed: did it")
    assert lines[1].startswith("hookpack act_hang: inst1.example.test: timeout: abandoned")
    assert lines[2].startswith("hookpack act_ok: inst1.example.test: timeout: not started")
    assert result.exit_code == code


def test_busy_loop_holding_the_interpreter_is_ended_by_the_watchdog(tmp_path, sample,
                                                                    write_config):
    environ, _ = sample("instance-start-post-node1")
    config = write_config("[hook]\ndeadline = 1.0\n")
    _custom_entry(tmp_path / "hooks" / "instance-start-post.d", "50-custom", config,
                  "tests.helpers.act_spin:post")
    start = time.monotonic()
    [result] = run_hooks(tmp_path / "hooks", "instance-start", "post", environ)
    assert time.monotonic() - start < 2.0
    assert "timeout" in result.output and result.exit_code == 0


def test_a_failing_action_does_not_stop_the_others_and_post_exits_zero(tmp_path, sample,
                                                                       write_config):
    environ, _ = sample("instance-start-post-node1")
    config = write_config()
    _custom_entry(tmp_path / "hooks" / "instance-start-post.d", "50-custom", config,
                  "tests.helpers.act_boom:post,tests.helpers.act_ok:post")
    [result] = run_hooks(tmp_path / "hooks", "instance-start", "post", environ)
    lines = result.output.splitlines()
    assert lines[0].startswith(
        "hookpack act_boom: inst1.example.test: failed: internal error: RuntimeError: boom")
    assert lines[1].startswith("hookpack act_ok: inst1.example.test: changed")
    assert result.exit_code == 0 and "Traceback" not in result.output


def test_post_failure_exit_code_is_configurable(tmp_path, sample, write_config):
    environ, _ = sample("instance-start-post-node1")
    config = write_config("[hook]\npost_failure_exit_code = 3\n")
    _custom_entry(tmp_path / "hooks" / "instance-start-post.d", "50-custom", config,
                  "tests.helpers.act_boom:post")
    [result] = run_hooks(tmp_path / "hooks", "instance-start", "post", environ)
    assert result.exit_code == 3


def test_a_veto_in_one_action_still_lets_the_others_run(tmp_path, sample, write_config):
    environ, _ = sample("instance-start-pre-node1")
    config = write_config()
    _custom_entry(tmp_path / "hooks" / "instance-start-pre.d", "50-custom", config,
                  "tests.helpers.act_nay:pre,tests.helpers.act_ok:pre")
    [result] = run_hooks(tmp_path / "hooks", "instance-start", "pre", environ)
    assert result.exit_code == 1
    assert [line.split(":")[2].strip() for line in result.output.splitlines()] == [
        "veto", "changed"]


def test_unknown_hooks_version_skips_actions_with_a_warning(hooks, sample, tmp_path):
    environ, node = sample("instance-start-post-node1")
    environ["GANETI_HOOKS_VERSION"] = "3"
    root = hooks(_record_config(tmp_path, node))
    [result] = run_hooks(root, "instance-start", "post", environ)
    assert result.status == "success"
    assert "unknown hooks version 3" in result.output
    assert "no action ran" in result.output
    assert not (tmp_path / "record.jsonl").exists()


def test_invalid_config_gives_one_line_and_no_veto(hooks, sample, tmp_path):
    environ, _ = sample("instance-start-pre-node1")
    root = hooks("[record]\nenabled = true\n")
    (tmp_path / "hookpack.toml").write_text("[hook\ndeadline = 'x'\n")
    [result] = run_hooks(root, "instance-start", "pre", environ)
    assert result.exit_code == 0
    assert len(result.output.splitlines()) == 1
    assert result.output.startswith("hookpack: actions did not run for instance-start/pre: ")
    assert "not valid TOML" in result.output
    assert result.output.endswith("; the operation goes on (hook.pre_fail_closed = false)")


def test_bad_setting_fails_only_that_action(hooks, sample, tmp_path):
    environ, node = sample("instance-start-post-node1")
    root = hooks(_record_config(tmp_path, node) + "include_env = 'yes'\n")
    [result] = run_hooks(root, "instance-start", "post", environ)
    assert "record.include_env: must be true/false, not str" in result.output
    assert result.output.count("\n") == 0

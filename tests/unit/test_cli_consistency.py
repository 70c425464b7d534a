"""CLI consistency: --json wherever results are printed, confirmation for destructive
commands over everything, `doctor --strict`."""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys

import pytest

from hookpack.cli import build_parser

# Commands that print no results, or results in a format of their own.
NO_JSON = {
    "hook": "Ganeti's entry: its output is the job log",
    "metrics": "Prometheus' text format is the result",
    "config reference": "prints the Markdown reference",
    "jobwatch": "a daemon: its output is log lines",
    "hook-server": "a daemon: its output is log lines",
}


def _leaves(parser: argparse.ArgumentParser, prefix: str = ""):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), {o for a in parser._actions for o in a.option_strings}
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, f"{prefix} {name}")


def test_every_command_that_prints_results_takes_json():
    missing = [cmd for cmd, opts in _leaves(build_parser())
               if cmd not in NO_JSON and "--json" not in opts]
    assert not missing, missing
    assert {cmd for cmd, _ in _leaves(build_parser())} >= set(NO_JSON)


def _hookpack(*args: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hookpack", *args], capture_output=True,
                          text=True, stdin=stdin, timeout=60, check=False)


def test_shaping_clear_asks_for_all_like_apply(write_config):
    config = str(write_config())
    for verb in ("apply", "clear"):
        proc = _hookpack("shaping", verb, "--config", config)
        assert proc.returncode == 1
        assert f"shaping {verb}: name one INSTANCE or --all" in proc.stderr


def test_shaping_clear_all_needs_yes_without_a_terminal(write_config):
    proc = _hookpack("shaping", "clear", "--all", "--config", str(write_config()))
    assert proc.returncode == 1 and "add --yes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _outbox_with_events(config, n: int) -> list[str]:
    from hookpack.action import Paths
    from hookpack.config import load_config
    from hookpack.outbox import Outbox, event_id

    paths = Paths.from_config(load_config(config, required=True))
    outbox = Outbox(paths.spool_dir, paths.run_dir)
    for i in range(n):
        outbox.write(event_id(1_000_000 + i, f"{i:016x}"), {
            "subject": "web1.example.test", "event": {"kind": "migrate"},
            "deliveries": {"webhook": {}}}, new=True)
    return outbox.ids()


def _pending(config) -> int:
    out = _hookpack("outbox", "list", "--json", "--config", str(config)).stdout
    return len(out.splitlines())


def test_outbox_drop_all_refuses_without_yes_and_drops_with_it(write_config):
    config = write_config()
    _outbox_with_events(config, 3)
    proc = _hookpack("outbox", "drop", "--all", "--config", str(config))
    assert proc.returncode == 1 and "add --yes" in proc.stderr, proc.stderr
    assert _pending(config) == 3
    proc = _hookpack("outbox", "drop", "--all", "--yes", "--json", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["dropped"]) == 3 and result["pending"] == 0
    assert _pending(config) == 0


def _on_a_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run hookpack with a pty as stdin, answer the question, return (exit, stderr)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hookpack", *args], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.write(leader, answer.encode() + b"\n")
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    return proc.returncode, err


@pytest.mark.parametrize(("answer", "left"), [("no", 2), ("yes", 0)])
def test_outbox_drop_all_asks_on_a_terminal(write_config, answer, left):
    config = write_config()
    _outbox_with_events(config, 2)
    code, err = _on_a_terminal(["outbox", "drop", "--all", "--config", str(config)], answer)
    assert "discard 2 queued event(s)" in err and "Type yes to go on" in err, err
    assert code == (0 if answer == "yes" else 1), err
    assert _pending(config) == left


def _ready_node(write_config, tmp_path):
    config = write_config()
    (tmp_path / "ganeti_data_dir").mkdir()
    (tmp_path / "ganeti_data_dir" / "ssconf_release_version").write_text("3.0.2\n")
    from hookpack.roles import system_fqdn  # a node of the cluster, as doctor checks
    (tmp_path / "ganeti_data_dir" / "ssconf_node_list").write_text(f"{system_fqdn()}\n")
    proc = _hookpack("hooks", "install", "--root", str(tmp_path / "hooks_dir"), "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["changes"], proc.stdout
    return config


def test_doctor_strict_fails_on_warnings(write_config, tmp_path):
    config = _ready_node(write_config, tmp_path)
    checks = json.loads(_hookpack("doctor", "--json", "--config", str(config)).stdout)
    statuses = {c["name"]: c["status"] for c in checks}
    assert "fail" not in statuses.values(), statuses
    assert statuses["paths"] == "warn"  # no KVM runtime dir: no instance has run here
    assert _hookpack("doctor", "--config", str(config)).returncode == 0
    strict = _hookpack("doctor", "--strict", "--config", str(config))
    assert strict.returncode == 1, strict.stdout
    (tmp_path / "kvm_dir").mkdir()  # that warning gone: strict fails only on what is left
    statuses = {c["name"]: c["status"] for c in json.loads(
        _hookpack("doctor", "--json", "--config", str(config)).stdout)}
    assert statuses["paths"] == "pass"
    strict = _hookpack("doctor", "--strict", "--config", str(config))
    assert strict.returncode == (1 if "warn" in statuses.values() else 0), statuses


def test_json_outputs_parse(write_config, tmp_path):
    config = str(_ready_node(write_config, tmp_path))
    check = json.loads(_hookpack("config", "check", "--json", "--config", config).stdout)
    assert check["valid"] is True and {"section": "shaping", "status": "ok",
                                       "message": "disabled"} in check["sections"]
    actions = json.loads(_hookpack("actions", "--json", "--config", config).stdout)
    assert {"record", "shaping", "disk-grow"} <= {a["name"] for a in actions}
    again = json.loads(_hookpack("hooks", "install", "--root", str(tmp_path / "hooks_dir"),
                                 "--json").stdout)
    assert again["changes"] == []
    flush = json.loads(_hookpack("outbox", "flush", "--json", "--config", config).stdout)
    assert flush["pending"] == 0 and flush["delivered"] == []
    disks = json.loads(_hookpack("disk", "check", "--json", "--config", config).stdout)
    assert disks == {"disks": []}
    env = _hookpack("env", "--json", "--config", config)
    assert env.returncode == 0 and isinstance(json.loads(env.stdout), dict)
    gone = json.loads(_hookpack("hooks", "uninstall", "--root", str(tmp_path / "hooks_dir"),
                                "--json").stdout)
    assert gone["changes"] and not (tmp_path / "hooks_dir" / "instance-add-post.d").exists()


def test_an_actions_command_builds_its_own_parser_alone():
    """`hookpack shaping apply --all` (a timer on every node) imports the shaping action
    and not the others; its parser holds the same command as the whole one; a name that
    is not an action's command gets the whole parser."""
    probe = ("import sys; from hookpack.cli import _parser_for, build_parser\n"
             "p = _parser_for(['shaping', 'apply', '--all'])\n"
             "ns = p.parse_args(['shaping', 'apply', '--all'])\n"
             "print(ns.verb, ns.all, sorted(m for m in sys.modules if m.startswith("
             "('hookpack.actions.', 'hookpack.jobwatch', 'hookpack.hookserver')) "
             "and not m.startswith('hookpack.actions.shaping')))\n"
             "whole = _parser_for(['disk', 'show'])\n"
             "print(len(whole._subparsers._group_actions[0].choices) "
             "== len(build_parser()._subparsers._group_actions[0].choices))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert out[0] == "apply True []", out
    assert out[1] == "True", out


def test_every_hookpack_process_enters_through_run(monkeypatch):
    """The console script, `python -m hookpack` and the .deb's command call cli.run, which
    returns main's exit code and freezes what is left for the interpreter's last
    collection."""
    import gc
    import tomllib
    from pathlib import Path

    from hookpack import cli

    repo = Path(cli.__file__).resolve().parents[1]
    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"hookpack": "hookpack.cli:run"}
    for entry in (repo / "hookpack" / "__main__.py", repo / "debian" / "bin" / "hookpack"):
        assert "from hookpack.cli import run\n\nsys.exit(run())" in entry.read_text(), entry
    monkeypatch.setattr(cli, "main", lambda: 3)
    made = [[i] for i in range(1000)]  # objects the collector tracks, alive past run()
    before = gc.get_freeze_count()
    try:
        assert cli.run() == 3
        assert gc.get_freeze_count() >= before + len(made)
    finally:
        gc.unfreeze()

"""Global hooks, synchronous part: the installed 00/99-hookpack-global entries run by
the emulator exactly as Ganeti's node daemon runs a hooks directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookpack.emulator import pre_aborts, run_hooks
from hookpack.hooksinstall import ENTRY_NAME, GLOBAL_POST_ENTRY, GLOBAL_PRE_ENTRY


@pytest.fixture
def tree(hooks):
    """A hooks tree with hookpack's entries (the shared `hooks` fixture)."""
    return hooks


def _script(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def _env_dumper(directory: Path, name: str, out: Path) -> None:
    _script(directory, name, f"env | sort > {out}\n")


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def _node1(sample, tmp_path) -> dict[str, str]:
    environ, _ = sample("disk-grow-pre-node1")
    return {**environ, "GANETI_DATA_DIR": str(tmp_path / "ganeti")}


def test_global_scripts_run_first_in_pre_and_last_in_post(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n')
    trace = tmp_path / "trace"
    for phase in ("pre", "post"):
        _script(root / f"global-{phase}.d", "10-g", f"echo global-{phase} >> {trace}\n")
        _script(root / f"disk-grow-{phase}.d", "10-x", f"echo own-{phase} >> {trace}\n")
    environ = _node1(sample, tmp_path)
    pre = run_hooks(root, "disk-grow", "pre", environ)
    post = run_hooks(root, "disk-grow", "post", {**environ, "GANETI_HOOKS_PHASE": "post"})
    assert [r.name.split("/")[1] for r in pre] == [GLOBAL_PRE_ENTRY, "10-x", ENTRY_NAME]
    assert [r.name.split("/")[1] for r in post] == ["10-x", ENTRY_NAME, GLOBAL_POST_ENTRY]
    assert trace.read_text().split() == ["global-pre", "own-pre", "own-post", "global-post"]


def test_environment_is_the_hooks_plus_the_global_variables(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n')
    _env_dumper(root / "global-post.d", "10-env", tmp_path / "post.env")
    _env_dumper(root / "global-pre.d", "10-env", tmp_path / "pre.env")
    environ = {**_node1(sample, tmp_path), "HOME": "/root", "LANG": "C.UTF-8"}
    run_hooks(root, "disk-grow", "pre", environ)
    run_hooks(root, "disk-grow", "post", {**environ, "GANETI_HOOKS_PHASE": "post"})
    pre, post = _read_env(tmp_path / "pre.env"), _read_env(tmp_path / "post.env")
    hook = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
    assert {k: v for k, v in pre.items() if k in hook} == hook
    extra = {k: pre[k] for k in set(pre) - set(hook)}
    # env(1) adds PWD; sh adds nothing else under a cleared environment
    assert {k: v for k, v in extra.items() if k != "PWD"} == {
        "PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "GANETI_IS_MASTER": "master"}
    assert extra.get("PWD", "/") == "/"
    assert post["GANETI_POST_STATUS"] == "success" and "GANETI_POST_STATUS" not in pre
    assert "GANETI_JOB_ID" not in pre  # no job queue on this node


def test_is_master_is_not_master_on_another_node(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node2.example.test"\n')
    _env_dumper(root / "global-pre.d", "10-env", tmp_path / "pre.env")
    environ, node = sample("disk-grow-pre-node2")
    assert node == "node2.example.test"
    run_hooks(root, "disk-grow", "pre", environ)
    assert _read_env(tmp_path / "pre.env")["GANETI_IS_MASTER"] == "not_master"


def _job(queue: Path, job_id: int, op_id: str, instance: str, status: str = "running") -> None:
    queue.mkdir(parents=True, exist_ok=True)
    (queue / f"job-{job_id}").write_text(json.dumps({
        "id": job_id, "process_id": 1, "start_timestamp": [1, 0],
        "ops": [{"input": {"OP_ID": op_id, "instance_name": instance}, "status": status,
                 "start_timestamp": [1, 0], "result": None}]}))


def test_job_id_only_when_exactly_one_job_runs_this_opcode_on_this_target(
        tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n')
    _env_dumper(root / "global-pre.d", "10-env", tmp_path / "pre.env")
    environ = _node1(sample, tmp_path)
    queue = tmp_path / "ganeti" / "queue"
    name = environ["GANETI_INSTANCE_NAME"]
    _job(queue, 7, "OP_INSTANCE_GROW_DISK", name)
    _job(queue, 8, "OP_INSTANCE_GROW_DISK", "other.example.test")
    _job(queue, 9, "OP_INSTANCE_STARTUP", name)
    _job(queue, 6, "OP_INSTANCE_GROW_DISK", name, status="success")
    run_hooks(root, "disk-grow", "pre", environ)
    assert _read_env(tmp_path / "pre.env")["GANETI_JOB_ID"] == "7"
    _job(queue, 10, "OP_INSTANCE_GROW_DISK", name)  # ambiguous: no id rather than a guess
    run_hooks(root, "disk-grow", "pre", environ)
    assert "GANETI_JOB_ID" not in _read_env(tmp_path / "pre.env")


def test_pre_results_are_ignored_but_shown(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n')
    _script(root / "global-pre.d", "10-no", "echo refusing; exit 3\n")
    _script(root / "global-pre.d", "20-after", f"touch {tmp_path / 'after'}\n")
    results = run_hooks(root, "disk-grow", "pre", _node1(sample, tmp_path))
    first = results[0]
    assert (first.name, first.status) == (f"disk-grow-pre.d/{GLOBAL_PRE_ENTRY}", "success")
    assert "global-pre.d/10-no: exit 3: refusing" in first.output
    assert not pre_aborts(results)
    assert (tmp_path / "after").exists()  # a failing global script does not stop the next


def test_ganeti_naming_rules_apply_to_global_scripts(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n')
    trace = tmp_path / "trace"
    for name, mode in (("10-a", 0o755), ("20-b.sh", 0o755), ("30-c", 0o644),
                       (".40-d", 0o755), ("50-e", 0o755)):
        _script(root / "global-pre.d", name, f"echo {name} >> {trace}\n", mode)
    run_hooks(root, "disk-grow", "pre", _node1(sample, tmp_path))
    assert trace.read_text().split() == ["10-a", "50-e"]


def test_a_slow_script_is_killed_with_its_children_at_its_timeout(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n\n[global_hooks]\n'
                'script_timeout = 0.5\n')
    pidfile = tmp_path / "child.pid"
    _script(root / "global-post.d", "10-slow",
            f"sleep 60 & echo $! > {pidfile}; echo started; wait\n")
    _script(root / "global-post.d", "20-next", f"touch {tmp_path / 'next'}\n")
    started = time.monotonic()
    results = run_hooks(root, "disk-grow", "post",
                        {**_node1(sample, tmp_path), "GANETI_HOOKS_PHASE": "post"})
    assert time.monotonic() - started < 30  # bound, not a timing assert: sleep is 60
    last = results[-1]
    assert (last.name.split("/")[1], last.status) == (GLOBAL_POST_ENTRY, "success")
    assert "global-post.d/10-slow: killed at its time limit: started" in last.output
    assert (tmp_path / "next").exists()
    child = int(pidfile.read_text())
    for _ in range(50):
        if not os.path.exists(f"/proc/{child}") or \
                Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the script's child {child} survived")


def test_the_hook_deadline_bounds_all_global_scripts(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n\n[hook]\ndeadline = 1.5\n\n'
                '[global_hooks]\nscript_timeout = 60\n')
    _script(root / "global-pre.d", "10-slow", "sleep 60\n")
    _script(root / "global-pre.d", "20-slow", "sleep 60\n")
    results = run_hooks(root, "disk-grow", "pre", _node1(sample, tmp_path), timeout=30)
    assert results[0].status == "success"
    assert results[0].output.count("killed at its time limit") == 2


def test_disabled_runs_nothing_and_no_scripts_costs_nothing(tree, sample, tmp_path):
    root = tree('[node]\nfqdn = "node1.example.test"\n\n[global_hooks]\nenabled = false\n')
    _script(root / "global-pre.d", "10-a", f"touch {tmp_path / 'ran'}\n")
    results = run_hooks(root, "disk-grow", "pre", _node1(sample, tmp_path))
    assert [(r.status, r.output) for r in results if "global" in r.name] == [("success", "")]
    assert not (tmp_path / "ran").exists()


def test_empty_global_dir_imports_nothing_of_hookpack_but_the_entry(tmp_path):
    """The common case: the entry returns after one listing, without loading config."""
    hooks = tmp_path / "hooks"
    (hooks / "global-pre.d").mkdir(parents=True)
    (hooks / "disk-grow-pre.d").mkdir()
    entry = str(hooks / "disk-grow-pre.d" / GLOBAL_PRE_ENTRY)
    probe = (
        f"import sys\nsys.argv = [{entry!r}]\nfrom hookpack.globalhooks import main\n"
        "rc = main('/nonexistent.toml')\n"
        "print(rc, sorted(m for m in sys.modules if m.startswith('hookpack')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={"GANETI_HOOKS_PHASE": "pre", "PATH": "/usr/bin:/bin"},
                         cwd=str(Path(__file__).resolve().parents[2]), check=True).stdout
    assert out.strip() == "0 ['hookpack', 'hookpack.globalhooks']"

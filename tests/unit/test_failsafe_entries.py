"""The entries never block Ganeti because of a broken install (issue 17), and skip Python
when there is nothing to do (issue 21). Real entries, run by the emulator (Ganeti's
RunParts rules), real interpreters: a bare venv (hookpack not importable) and a venv
that imports hookpack from this checkout but has no pynetbox."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hookpack.emulator import pre_aborts, run_hooks
from hookpack.hooksinstall import ENTRY_NAME, GLOBAL_PRE_ENTRY, install

REPO = Path(__file__).resolve().parents[2]
NODE1 = '[node]\nfqdn = "node1.example.test"\n'
POLICY = '[policy]\nenabled = true\nname_pattern = "^x$"\n'


def _venv(path: Path, with_hookpack: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    if with_hookpack:  # hookpack from this checkout, none of its dependencies
        [site] = path.glob("lib/python3*/site-packages")
        (site / "hookpack-checkout.pth").write_text(f"{REPO}\n")
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def interpreters(tmp_path_factory):
    base = tmp_path_factory.mktemp("venvs")
    return {"bare": _venv(base / "bare", False), "nodeps": _venv(base / "nodeps", True)}


@pytest.fixture
def setup(tmp_path, write_config):
    """Write the config, install the entries with ``python``; returns the hooks root."""
    def make(extra: str, python: str = sys.executable) -> Path:
        config = write_config(extra)
        _log_file(config, tmp_path / "hookpack.log")
        root = tmp_path / "hooks"
        install(root, python=python, config=str(config))
        return root
    return make


def _log_file(config: Path, log: Path) -> None:
    # write_config's [log] table (syslog off) gets `file`: the entries' own lines land there.
    text = config.read_text().replace("[log]\n", f'[log]\nfile = "{log}"\n', 1)
    config.write_text(text)


def _pre_add_env(sample) -> dict[str, str]:
    environ, _ = sample("instance-add-post-node1")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ["GANETI_HOOKS_PHASE"] = "pre"
    return environ


def _entry(results, name=ENTRY_NAME):
    [result] = [r for r in results if r.name.endswith("/" + name)]
    return result


def _logged(tmp_path: Path) -> list[str]:
    try:
        return [line.split(" ", 1)[1] for line in
                (tmp_path / "hookpack.log").read_text().splitlines()]
    except FileNotFoundError:
        return []


# -- broken installs ---------------------------------------------------------------------

@pytest.mark.parametrize("closed", [False, True])
def test_missing_interpreter_one_line_and_pre_goes_on_unless_fail_closed(
        closed, setup, sample, tmp_path):
    root = setup(NODE1 + POLICY + f"[hook]\npre_fail_closed = {str(closed).lower()}\n",
                 python=str(tmp_path / "gone" / "bin" / "python"))
    results = run_hooks(root, "instance-add", "pre", _pre_add_env(sample))
    result = _entry(results)
    line = (f"hookpack: actions did not run for instance-add/pre: interpreter "
            f"{tmp_path}/gone/bin/python is missing or not executable; reinstall hookpack "
            "(hookpack doctor); ")
    assert result.output.splitlines() == [line + (
        "vetoing the operation (hook.pre_fail_closed = true)" if closed else
        "the operation goes on (hook.pre_fail_closed = false)")]
    assert result.exit_code == (1 if closed else 0)
    assert pre_aborts(results) == closed
    assert _logged(tmp_path) == [result.output]


def test_hookpack_not_importable_one_line_pre_and_post(interpreters, setup, sample, tmp_path):
    root = setup(NODE1 + POLICY + "[record]\nenabled = true\n",
                 python=str(interpreters["bare"]))
    pre = _entry(run_hooks(root, "instance-add", "pre", _pre_add_env(sample)))
    assert pre.exit_code == 0
    assert pre.output == ("hookpack: actions did not run for instance-add/pre: cannot import "
                          "hookpack: ModuleNotFoundError: No module named 'hookpack'; the "
                          "operation goes on (hook.pre_fail_closed = false)")
    environ, _ = sample("instance-start-post-node1")
    post = _entry(run_hooks(root, "instance-start", "post", environ))
    assert post.exit_code == 0
    assert post.output == ("hookpack: actions did not run for instance-start/post: cannot "
                           "import hookpack: ModuleNotFoundError: No module named 'hookpack'")
    assert _logged(tmp_path) == [pre.output, post.output]


def test_missing_dependency_fails_only_its_action(interpreters, setup, sample, tmp_path):
    (tmp_path / "netbox.token").write_text("0123456789abcdef\n")
    (tmp_path / "netbox.token").chmod(0o600)
    root = setup(NODE1 + "[record]\nenabled = true\npath = "
                 f'"{tmp_path / "record.jsonl"}"\n[netbox]\nenabled = true\n'
                 f'url = "http://127.0.0.1:9"\ntoken_file = "{tmp_path / "netbox.token"}"\n',
                 python=str(interpreters["nodeps"]))
    environ, _ = sample("instance-add-post-node1")
    result = _entry(run_hooks(root, "instance-add", "post", environ))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("hookpack record: inst1.example.test: ")
    assert lines[1].startswith("hookpack netbox: inst1.example.test: failed: ")
    assert lines[1].startswith("hookpack netbox: inst1.example.test: failed: cannot import a "
                               "dependency: ModuleNotFoundError: No module named 'pynetbox'; "
                               "reinstall hookpack with its dependencies")
    assert (tmp_path / "record.jsonl").exists()  # the other action ran


@pytest.mark.parametrize("closed", [False, True])
def test_config_broken_after_install_keeps_the_fail_closed_choice(closed, setup, sample,
                                                                  tmp_path):
    root = setup(NODE1 + POLICY + f"[hook]\npre_fail_closed = {str(closed).lower()}\n")
    config = tmp_path / "hookpack.toml"
    config.write_text(config.read_text() + "[hook\n")
    result = _entry(run_hooks(root, "instance-add", "pre", _pre_add_env(sample)))
    [line] = result.output.splitlines()
    assert line.startswith(f"hookpack: actions did not run for instance-add/pre: {config}: "
                           "not valid TOML: ")
    assert line.endswith("; vetoing the operation (hook.pre_fail_closed = true)" if closed
                         else "; the operation goes on (hook.pre_fail_closed = false)")
    assert result.exit_code == (1 if closed else 0)
    environ, _ = sample("instance-start-post-node1")
    post = _entry(run_hooks(root, "instance-start", "post", environ))
    assert post.exit_code == 0 and "did not run for instance-start/post" in post.output


@pytest.mark.parametrize(("ending", "status", "last"), [
    ("exit 1", 1, "Fatal Python error: init_fs_encoding: failed"),
    ("kill -SEGV $$", 139, "Segmentation fault")])
def test_an_interpreter_that_dies_is_one_line_not_a_failure(ending, status, last, setup,
                                                            sample, tmp_path):
    fake = tmp_path / "crash" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'Traceback (most recent call last):'\n"
                    f"echo 'Fatal Python error: init_fs_encoding: failed'\n{ending}\n")
    fake.chmod(0o755)
    root = setup(NODE1 + POLICY, python=str(fake))
    result = _entry(run_hooks(root, "instance-add", "pre", _pre_add_env(sample)))
    assert result.exit_code == 0
    assert result.output == (
        f"hookpack: actions did not run for instance-add/pre: {fake} exited with status "
        f"{status} before hookpack answered: {last}; the operation goes on "
        "(hook.pre_fail_closed = false)")


def test_a_real_veto_still_vetoes(setup, sample):
    root = setup(NODE1 + POLICY)
    results = run_hooks(root, "instance-add", "pre", _pre_add_env(sample))
    result = _entry(results)
    assert result.exit_code == 1 and pre_aborts(results)
    assert result.output.startswith("hookpack policy: inst1.example.test: veto: ")
    assert "did not run" not in result.output


def test_post_failure_exit_code_passes_through(setup, sample, tmp_path):
    qmp = '[disk_grow]\nqmp_timeout = 0.2\n'
    root = setup(NODE1 + "[hook]\npost_failure_exit_code = 3\n" + qmp)
    environ, _ = sample("disk-grow-post-node1")
    result = _entry(run_hooks(root, "disk-grow", "post", environ))
    assert result.exit_code == 3, result.output  # no QEMU here: disk-grow fails
    assert ": failed: " in result.output


# -- what an entry with nothing to do costs ----------------------------------------------

@pytest.fixture
def counting_python(tmp_path):
    """An interpreter that records each start, then runs this venv's Python."""
    calls = tmp_path / "python-starts"
    fake = tmp_path / "counting" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(f"#!/bin/sh\necho started >> {calls}\nexec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)

    def starts() -> int:
        try:
            return len(calls.read_text().splitlines())
        except FileNotFoundError:
            return 0
    return str(fake), starts


def _ssconf(tmp_path: Path, *nodes: str) -> None:
    data = tmp_path / "ganeti_data_dir"
    data.mkdir(exist_ok=True)
    (data / "ssconf_node_list").write_text("".join(f"{n}\n" for n in nodes))


def test_nothing_enabled_here_starts_no_python(setup, sample, counting_python, tmp_path):
    python, starts = counting_python
    root = setup(NODE1 + POLICY, python=python)  # policy: instance-add/rename pre only
    environ, _ = sample("instance-start-pre-node1")
    results = run_hooks(root, "instance-start", "pre", environ)
    assert [r.exit_code for r in results] == [0, 0] and starts() == 0
    assert all(r.output == "" for r in results)
    run_hooks(root, "instance-add", "pre", _pre_add_env(sample))
    assert starts() == 1  # the policy action: Python, once (the global entry: no scripts)


def test_config_changed_after_install_is_never_trusted(setup, sample, counting_python,
                                                       tmp_path):
    python, starts = counting_python
    root = setup(NODE1 + POLICY, python=python)
    config = tmp_path / "hookpack.toml"
    config.write_text(config.read_text() + "[record]\nenabled = true\npath = "
                      f'"{tmp_path / "record.jsonl"}"\n')
    environ, _ = sample("instance-start-pre-node1")
    result = _entry(run_hooks(root, "instance-start", "pre", environ))
    assert starts() == 1 and result.output.startswith("hookpack record: ")
    # Same content, new mtime: still not trusted until `hookpack hooks install` again.
    os.utime(config, ns=(time.time_ns(), time.time_ns()))
    assert install(root, python=python, config=str(config)) != []
    _entry(run_hooks(root, "instance-start", "pre", environ))
    assert starts() == 2  # record runs everywhere: still one start, now from the facts


def test_master_only_action_skips_python_on_other_nodes(setup, sample, counting_python,
                                                        tmp_path):
    python, starts = counting_python
    _ssconf(tmp_path, "node1.example.test", "node2.example.test")
    environ = _pre_add_env(sample)  # master: node1
    root = setup('[node]\nfqdn = "node2.example.test"\n' + POLICY, python=python)
    assert "hp_node='node2.example.test'" in (root / "instance-add-pre.d" /
                                             ENTRY_NAME).read_text()
    assert _entry(run_hooks(root, "instance-add", "pre", environ)).exit_code == 0
    assert starts() == 0
    root = setup(NODE1 + POLICY, python=python)
    assert _entry(run_hooks(root, "instance-add", "pre", environ)).exit_code == 1
    assert starts() == 1


def test_a_node_name_ganeti_does_not_list_is_not_baked(setup, sample, counting_python,
                                                       tmp_path):
    python, starts = counting_python
    _ssconf(tmp_path, "node1.example.test")
    root = setup('[node]\nfqdn = "elsewhere.example.test"\n' + POLICY, python=python)
    assert "hp_node=''" in (root / "instance-add-pre.d" / ENTRY_NAME).read_text()
    run_hooks(root, "instance-add", "pre", _pre_add_env(sample))
    assert starts() == 1  # unsure: hookpack decides (and finds nothing for this node)


def test_global_entry_starts_python_only_with_global_scripts(setup, sample, counting_python,
                                                             tmp_path):
    python, starts = counting_python
    root = setup(NODE1, python=python)
    environ, _ = sample("instance-start-pre-node1")
    run_hooks(root, "instance-start", "pre", environ)
    assert starts() == 0
    (root / "global-pre.d").mkdir()
    (root / "global-pre.d" / "10-site").write_text("#!/bin/sh\necho site-hook ran\n")
    (root / "global-pre.d" / "10-site").chmod(0o755)
    result = _entry(run_hooks(root, "instance-start", "pre", environ), GLOBAL_PRE_ENTRY)
    assert starts() == 1 and "10-site: exit 0: site-hook ran" in result.output


def test_the_line_goes_to_syslog_through_logger(setup, sample, tmp_path):
    """No syslog daemon here: a stand-in `logger` first on PATH records how the entry
    calls it (the entry is run directly, with the hook environment plus that PATH)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "logger").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/logger.args\n')
    (bin_dir / "logger").chmod(0o755)
    root = setup(NODE1 + POLICY, python=str(tmp_path / "gone" / "bin" / "python"))
    config = tmp_path / "hookpack.toml"
    config.write_text(config.read_text().replace("syslog = false", "syslog = true\n"
                                                 'syslog_facility = "local3"'))
    install(root, python=str(tmp_path / "gone" / "bin" / "python"), config=str(config))
    entry = root / "instance-add-pre.d" / ENTRY_NAME
    environ = {**_pre_add_env(sample), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run([str(entry)], env=environ, cwd="/", capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0
    args = (tmp_path / "logger.args").read_text().splitlines()
    assert args == ["-t", "hookpack", "-p", "local3.err", "--", proc.stderr.strip()]
    assert proc.stderr.startswith("hookpack: actions did not run for instance-add/pre: ")


@pytest.mark.slow
def test_a_python_that_hangs_before_hookpack_runs_is_killed_within_the_bound(
        setup, sample, tmp_path):
    """A hang below hookpack's own deadline (an import stuck on a dead disk): the entry's
    `timeout` ends it at hook.deadline + 10 s and the pre hook goes on. The interpreter is
    a stand-in that hangs (real Python cannot be made to hang on import here)."""
    hung = tmp_path / "hung" / "bin" / "python"
    hung.parent.mkdir(parents=True)
    hung.write_text("#!/bin/sh\nexec sleep 600\n")
    hung.chmod(0o755)
    root = setup(NODE1 + POLICY + "[hook]\ndeadline = 0.5\n", python=str(hung))
    start = time.monotonic()
    results = run_hooks(root, "instance-add", "pre", _pre_add_env(sample))
    took = time.monotonic() - start
    result = _entry(results)
    assert result.output == ("hookpack: actions did not run for instance-add/pre: hookpack "
                             "did not answer within 11 s (killed); the operation goes on "
                             "(hook.pre_fail_closed = false)"), result.output
    assert result.exit_code == 0 and not pre_aborts(results)
    assert took < 11 + 2 + 5, took  # the bound, the kill grace, process starts

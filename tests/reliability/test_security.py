"""Security: no shell anywhere, safe file modes after real runs, secrets never in output
(tests/helpers/secretscan.py checks every test; proven here), tags never raise a limit."""

from __future__ import annotations

import ast
import os
import stat
import sys
from pathlib import Path

import pytest

from hookpack.actions.shaping.model import parse_rate
from hookpack.actions.shaping.policy import Defaults, PolicyStore, from_tags
from hookpack.emulator import run_hooks
from tests.helpers import secretscan

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("hookpack", "hooks.d", "vm-testbed", "scripts")
SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output", "Popen", "getoutput",
                    "getstatusoutput"}


# -- source scan ---------------------------------------------------------------------

def python_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*")):
            if ".cache" in path.parts or ".venv" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or (path.suffix == "" and path.read_bytes()[:64]
                                        .startswith(b"#!") and b"python" in
                                        path.read_bytes()[:64]):
                files.append(path)
    return files


def shell_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that reach a shell: shell=True anywhere, os.system/os.popen, os.exec*p with
    "sh -c", and any subprocess call whose command is a string (or f-string)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
            func.value, ast.Name) else ""
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append((node.lineno, "shell= not False"))
        if owner == "os" and name in ("system", "popen", "popen2", "popen3"):
            found.append((node.lineno, f"os.{name}"))
        if owner == "subprocess" and name in ("getoutput", "getstatusoutput"):
            found.append((node.lineno, f"subprocess.{name} (always a shell)"))
        if (owner == "subprocess" or name == "Popen") and name in SUBPROCESS_CALLS:
            command = node.args[0] if node.args else next(
                (kw.value for kw in node.keywords if kw.arg == "args"), None)
            if isinstance(command, ast.JoinedStr | ast.BinOp) or (
                    isinstance(command, ast.Constant) and isinstance(command.value, str)):
                found.append((node.lineno, f"subprocess.{name} with a string command"))
    return found


def test_the_scanner_finds_each_kind_of_shell_use():
    bad = ("import os, subprocess\nsubprocess.run('ls -l', check=True)\n"
           "subprocess.Popen(f'ls {x}')\nsubprocess.check_output(['ls'], shell=True)\n"
           "os.system('id')\nos.popen('id')\nsubprocess.getoutput('id')\n"
           "subprocess.call(args='ls ' + x)\n")
    good = "import subprocess\nsubprocess.run(['ls', '-l'], check=True, shell=False)\n"
    assert sorted({line for line, _ in shell_uses(ast.parse(bad))}) == [2, 3, 4, 5, 6, 7, 8]
    assert shell_uses(ast.parse(good)) == []


def test_no_shell_anywhere_in_hookpack_hooks_testbed_and_scripts():
    files = python_files()
    assert len(files) > 50 and any(p.parts[-2] == "hookpack" for p in files)
    problems = [f"{path.relative_to(REPO)}:{line}: {what}" for path in files
                for line, what in shell_uses(ast.parse(path.read_bytes(), str(path)))]
    assert problems == []


# -- file modes after real runs --------------------------------------------------------

def _modes(root: Path) -> dict[str, int]:
    out = {}
    for path in [root, *root.rglob("*")]:
        info = os.lstat(path)
        if not stat.S_ISLNK(info.st_mode):
            out[str(path)] = stat.S_IMODE(info.st_mode)
    return out


@pytest.fixture
def loose_umask():
    """umask 000 while hooks run: hookpack must set its own modes, not trust the caller's
    umask (Ganeti's noded passes its own; an operator's shell may have anything)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_files_hookpack_creates_have_safe_modes(hooks, sample, tmp_path, loose_umask):
    environ, node = sample("instance-migrate-post-node1")
    url = tmp_path / "webhook.url"
    url.write_text("http://127.0.0.1:9/fuzz-webhook-secret-0001\n")
    url.chmod(0o600)
    root = hooks(
        f'[node]\nfqdn = "{node}"\n[record]\nenabled = true\npath = "{tmp_path}/rec.jsonl"\n'
        f'[announce]\nenabled = true\nwebhook_url_file = "{url}"\n'
        'allow_insecure_hosts = ["127.0.0.1"]\n[shaping]\nenabled = false\n')
    results = run_hooks(root, "instance-migrate", "post", environ)
    assert results and all(r.exit_code == 0 for r in results), results
    assert "queued" in "".join(r.output for r in results)  # a spool event was written
    state, spool, run = tmp_path / "state_dir", tmp_path / "spool_dir", tmp_path / "run_dir"
    assert list((state / "runs").glob("*.json")) and any(spool.rglob("*"))
    modes = {**_modes(state), **_modes(spool), **_modes(run), **_modes(root),
             str(tmp_path / "rec.jsonl"): stat.S_IMODE(os.stat(tmp_path / "rec.jsonl").st_mode)}
    writable = {p: oct(m) for p, m in modes.items() if m & (stat.S_IWGRP | stat.S_IWOTH)}
    assert writable == {}
    spool_readable = {p: oct(m) for p, m in _modes(spool).items()
                      if m & (stat.S_IRWXG | stat.S_IRWXO) and Path(p) != spool}
    assert spool_readable == {}, "spool events may carry instance data: root only"
    config = tmp_path / "hookpack.toml"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    entries = [p for p in root.rglob("*hookpack*") if p.is_file() and p.parent != root]
    assert entries and all(stat.S_IMODE(os.stat(p).st_mode) == 0o755 for p in entries)


# -- secrets never in output (the plugin, proven) --------------------------------------

LEAKY_TESTS = f'''
import subprocess, sys
from hookpack.emulator import run_hooks

SECRET = {secretscan.SECRETS["grafana token"]!r}

def test_leak_on_inherited_stderr():
    subprocess.run([sys.executable, "-c", f"import sys; sys.stderr.write('token={{SECRET}}')"],
                   check=True)

def test_leak_in_captured_subprocess_output():
    subprocess.run([sys.executable, "-c", f"print('auth: {{SECRET}}')"], check=True,
                   capture_output=True)

def test_leak_in_a_hook_output(tmp_path):
    d = tmp_path / "instance-start-post.d"
    d.mkdir()
    (d / "50-leak").write_text(f"#!/bin/sh\\necho Bearer {{SECRET}} >&2\\n")
    (d / "50-leak").chmod(0o755)
    run_hooks(tmp_path, "instance-start", "post", {{}})

def test_clean():
    subprocess.run([sys.executable, "-c", "print('nothing to see')"], check=True)
'''


def test_the_secret_scanner_fails_a_test_that_leaks(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *sys.path]))
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    # --show-capture=no: the inner run must not echo the leaked value into this test's
    # own output (which the scanner checks too).
    result = pytester.runpytest_subprocess("-p", "tests.helpers.secretscan", "-p",
                                           "no:cacheprovider", "-rf", "--show-capture=no")
    result.assert_outcomes(passed=1, failed=3)
    text = result.stdout.str()
    for where in ("captured stderr call", "output of a subprocess.run",
                  "hook output of instance-start-post.d/50-leak"):
        assert f"secretscan: a secret showed in this test's output: grafana token in {where}" \
            in text, text
    assert secretscan.SECRETS["grafana token"] not in text


def test_policy_dns_key_stays_out_of_the_hook_output(hooks, sample, tmp_path):
    """A real run that handles a secret (the PowerDNS key, sent to a closed port): the
    plugin scans its output; here also checked directly."""
    environ, _ = sample("instance-add-post-node1")
    environ = {k: v for k, v in environ.items() if not k.startswith("GANETI_POST_")}
    environ["GANETI_HOOKS_PHASE"] = "pre"
    key = tmp_path / "pdns.key"
    key.write_text(secretscan.SECRETS["reliability pdns key"] + "\n")
    key.chmod(0o600)
    root = hooks('[node]\nfqdn = "node1.example.test"\n[policy]\nenabled = true\n'
                 'dns_check = true\n[dns]\napi_url = "http://127.0.0.1:9"\n'
                 f'api_key_file = "{key}"\nforward_zones = ["example.test"]\n')
    results = run_hooks(root, "instance-add", "pre", environ)
    output = "".join(r.output for r in results)
    assert "hookpack policy: " in output and "fail open" in output
    assert secretscan.SECRETS["reliability pdns key"] not in output


# -- tags never raise a limit ----------------------------------------------------------

CAPS = Defaults(egress=parse_rate("100mbit"), ingress=parse_rate("50mbit"),
                max_egress=parse_rate("200mbit"), max_ingress=parse_rate("50mbit"))


@pytest.mark.parametrize(("tags", "egress", "ingress"), [
    (["hookpack:egress:10gbit"], "200mbit", "50mbit"),
    (["hookpack:egress=1tbit", "hookpack:ingress:900mbit"], "200mbit", "50mbit"),
    (["hookpack:egress:150mbit"], "150mbit", "50mbit"),
    (["hookpack:ingress:10mbit", "hookpack:ingress:99gbit"], "100mbit", "10mbit"),
    (["hookpack:egress:1.5gbit", "hookpack:egress:bad", "HOOKPACK:EGRESS:10gbit"],
     "200mbit", "50mbit"),
])
def test_a_tag_never_raises_a_rate_above_its_cap(tags, egress, ingress):
    policy = from_tags(tags, CAPS)
    assert (policy.egress, policy.ingress) == (parse_rate(egress), parse_rate(ingress))


def test_stored_tags_are_capped_again_when_read_back(tmp_path):
    """The tag store (state_dir) is re-read by `hookpack shaping reconcile`; a hand-edited
    or stale file cannot lift a limit either."""
    store = PolicyStore(tmp_path)
    store.save("inst1.example.test", ["hookpack:egress:100gbit"])
    store.path("inst1.example.test").write_text('["hookpack:egress:1tbit", 42, null]')
    policy = from_tags(store.load("inst1.example.test"), CAPS)
    assert policy.egress == CAPS.max_egress

"""Ganeti's RunParts rules: run the scripts of a directory as Ganeti's node daemon does.

From Ganeti's lib/backend.py (HooksRunner) and lib/utils/process.py (RunParts,
RunCmd) at v3.0.2: the scripts of a directory run one after another in sorted
order; a file runs only if its name matches ^[a-zA-Z0-9_-]+$ and it is an
executable regular file (hidden files are not even listed); the environment is
cleared and rebuilt from the hook variables plus PATH=/sbin:/bin:/usr/sbin:/usr/bin;
cwd is /; stdin is a pipe closed at once; stdout and stderr are captured and joined
(stdout first). Used by the test emulator and by the global hooks.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from hookpack.record import record

HOOKS_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
NAME_MASK = re.compile(r"^[a-zA-Z0-9_-]+$")


@record(frozen=True)
class ScriptResult:
    name: str  # "<directory name>/<script>", as Ganeti reports it
    status: str  # "skip", "success" or "fail"
    output: str
    exit_code: int | None = None
    timed_out: bool = False


def hook_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Only what Ganeti passes: the GANETI_* variables and its fixed PATH."""
    env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
    env["PATH"] = HOOKS_PATH
    return env


def list_scripts(directory: Path) -> list[str]:
    """The visible entries of ``directory``, sorted (empty when it does not exist)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith("."))


def runnable(directory: Path, name: str) -> bool:
    path = directory / name
    return bool(NAME_MASK.match(name)) and path.is_file() and os.access(path, os.X_OK)


def run_parts(directory: Path, environ: Mapping[str, str], *,
              timeout: float | None = None, deadline: float | None = None,
              names: list[str] | None = None) -> list[ScriptResult]:
    """Run every runnable script of ``directory`` in order, each bounded by ``timeout``
    seconds and all of them by the monotonic ``deadline`` (a script past either is
    killed with its process group and reported as failed)."""
    env = hook_environment(environ)
    results = []
    for name in list_scripts(directory) if names is None else names:
        label = f"{directory.name}/{name}"
        if not runnable(directory, name):
            results.append(ScriptResult(label, "skip", ""))
            continue
        limit = timeout
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            limit = left if limit is None else min(limit, left)
        results.append(run_one(directory / name, label, env, limit))
    return results


def run_one(path: Path, label: str, env: dict[str, str],
            timeout: float | None) -> ScriptResult:
    proc = subprocess.Popen([str(path)], env=env, cwd="/", stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True,
                            start_new_session=True)
    try:
        # Empty input: the pipe is closed at once, as Ganeti's RunCmd closes it.
        out, err = proc.communicate(input=b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild still holds the pipes
            proc.kill()
            out, err = b"", b""
        text = (out + err).decode("utf-8", "replace").strip()
        note = f"killed after {timeout:.1f}s" if timeout is not None else "killed"
        return ScriptResult(label, "fail", f"{text}\n{note}".strip(), None, timed_out=True)
    output = (out + err).decode("utf-8", "replace").strip()
    status = "success" if proc.returncode == 0 else "fail"
    return ScriptResult(label, status, output, proc.returncode)


def _kill_group(pid: int) -> None:
    # The script leads its own session (start_new_session): its group id is its pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)

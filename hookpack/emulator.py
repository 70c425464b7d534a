"""Run a Ganeti hooks directory exactly as Ganeti's node daemon does, for tests.

From Ganeti's lib/backend.py (HooksRunner) and lib/utils/process.py (RunParts,
RunCmd) at v3.0.2: the scripts of `<hpath>-<phase>.d` run one after another in
sorted order; a file runs only if its name matches ^[a-zA-Z0-9_-]+$ and it is an
executable regular file (hidden files are not even listed); the environment is
cleared and rebuilt from the hook variables plus PATH=/sbin:/bin:/usr/sbin:/usr/bin;
cwd is /; stdin is a pipe closed at once; stdout and stderr are captured and joined
(stdout first); a pre-phase script that fails aborts the operation.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOOKS_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"
NAME_MASK = re.compile(r"^[a-zA-Z0-9_-]+$")


@dataclass(frozen=True)
class ScriptResult:
    name: str  # "<hpath>-<phase>.d/<script>", as Ganeti reports it
    status: str  # "skip", "success" or "fail"
    output: str
    exit_code: int | None = None


def hook_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Only what Ganeti passes: the GANETI_* variables and its fixed PATH."""
    env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
    env["PATH"] = HOOKS_PATH
    return env


def run_hooks(hooks_dir: Path, hpath: str, phase: str, environ: Mapping[str, str],
              timeout: float | None = 120.0) -> list[ScriptResult]:
    subdir = f"{hpath}-{phase}.d"
    directory = hooks_dir / subdir
    if not directory.is_dir():
        return []
    env = hook_environment(environ)
    results = []
    for name in sorted(n for n in os.listdir(directory) if not n.startswith(".")):
        path = directory / name
        if not (NAME_MASK.match(name) and path.is_file() and os.access(path, os.X_OK)):
            results.append(ScriptResult(f"{subdir}/{name}", "skip", ""))
            continue
        results.append(_run_one(path, f"{subdir}/{name}", env, timeout))
    return results


def _run_one(path: Path, label: str, env: dict[str, str],
             timeout: float | None) -> ScriptResult:
    # Ganeti itself has no timeout; ours only keeps a broken test from hanging forever.
    proc = subprocess.Popen([str(path)], env=env, cwd="/", stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)
    try:
        # Empty input: the pipe is closed at once, as Ganeti's RunCmd closes it.
        out, err = proc.communicate(input=b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return ScriptResult(label, "fail", "emulator: killed after its test timeout", None)
    output = (out + err).decode("utf-8", "replace").strip()
    status = "success" if proc.returncode == 0 else "fail"
    return ScriptResult(label, status, output, proc.returncode)


def pre_aborts(results: list[ScriptResult]) -> bool:
    """Ganeti raises HooksAbort when any pre-phase script failed."""
    return any(r.status == "fail" for r in results)

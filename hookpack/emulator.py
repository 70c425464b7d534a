"""Run a Ganeti hooks directory exactly as Ganeti's node daemon does, for tests.

The rules (sorted, name mask, executable regular files, hidden files not listed,
cleared environment plus Ganeti's PATH, cwd /, stdin closed) are Ganeti's RunParts,
in hookpack/runparts.py; a pre-phase script that fails aborts the operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hookpack.runparts import HOOKS_PATH, NAME_MASK, ScriptResult, hook_environment, run_parts

__all__ = ["HOOKS_PATH", "NAME_MASK", "ScriptResult", "hook_environment", "pre_aborts",
           "run_hooks"]


def run_hooks(hooks_dir: Path, hpath: str, phase: str, environ: Mapping[str, str],
              timeout: float | None = 120.0) -> list[ScriptResult]:
    # Ganeti itself has no timeout; ours only keeps a broken test from hanging forever.
    directory = hooks_dir / f"{hpath}-{phase}.d"
    if not directory.is_dir():
        return []
    return run_parts(directory, environ, timeout=timeout)


def pre_aborts(results: list[ScriptResult]) -> bool:
    """Ganeti raises HooksAbort when any pre-phase script failed."""
    return any(r.status == "fail" for r in results)

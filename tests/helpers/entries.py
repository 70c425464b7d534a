"""The results of hookpack's actions entry (50-hookpack) among a hooks run's results."""

from __future__ import annotations

from hookpack.emulator import ScriptResult
from hookpack.hooksinstall import ENTRY_NAME


def actions_entry(results: list[ScriptResult]) -> list[ScriptResult]:
    """Without the global hooks' 00-/99-hookpack-global entries (tested on their own)."""
    return [r for r in results if r.name.rsplit("/", 1)[-1] == ENTRY_NAME]

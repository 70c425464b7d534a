"""scripts/mutation-check under scripts/test: each core decision, broken on a copy of the
tree, is caught by at least one existing test (role resolution, the never-shrink guard,
the shaping and pinning node locks, the veto exit code)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.netns]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation-check"


def test_every_broken_core_decision_is_caught():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         timeout=600, check=False)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    caught = [line for line in run.stdout.splitlines() if line.startswith("caught: ")]
    assert len(caught) == 5, run.stdout
    assert "MISSED" not in run.stdout

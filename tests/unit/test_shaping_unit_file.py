"""The boot unit is a valid systemd unit (systemd-analyze verify)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "hookpack-shaping.service"


def test_unit_runs_apply_all_after_the_network():
    text = UNIT.read_text()
    assert "Type=oneshot" in text and "After=network-online.target" in text
    assert "ExecStart=/usr/bin/hookpack shaping apply --all" in text


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at this venv's entry point
    exe = Path(sys.executable).with_name("hookpack")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/bin/hookpack", str(exe)))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hookpack-shaping.service" not in proc.stderr, proc.stderr

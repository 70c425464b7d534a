"""The outbox flush units pass `systemd-analyze verify` (with ExecStart pointed at this
checkout's hookpack, since /usr/local/bin/hookpack does not exist here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd)")
def test_units_verify(tmp_path):
    hookpack = Path(sys.executable).with_name("hookpack")
    assert hookpack.exists()
    for unit in ("hookpack-outbox-flush.service", "hookpack-outbox-flush.timer"):
        text = (UNITS / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/hookpack", str(hookpack)))
    result = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_service_runs_the_flush_and_the_timer_starts_it():
    service = (UNITS / "hookpack-outbox-flush.service").read_text()
    assert "\nExecStart=/usr/local/bin/hookpack outbox flush\n" in service
    assert "\nType=oneshot\n" in service
    timer = (UNITS / "hookpack-outbox-flush.timer").read_text()
    assert "\nOnUnitInactiveSec=1min\n" in timer and "\nWantedBy=timers.target\n" in timer

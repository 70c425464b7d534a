"""Last: ``down`` leaves the machine as the lab found it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmtestbed.ganeti import machine
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.lab import Lab

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]


def test_down_restores_the_machine(ganeti_lab, ganeti_machine_before, ganeti_timings):
    up = machine.snapshot()
    assert machine.diff(ganeti_machine_before, up), "the lab should be visible while up"
    t0 = time.monotonic()
    report = ganeti_lab.down()
    ganeti_timings["lab.down_2_nodes"] = round(time.monotonic() - t0, 1)
    assert report.cluster_destroyed
    assert not report.problems
    leftovers = machine.diff(ganeti_machine_before, machine.snapshot())
    assert leftovers == []


def test_down_cleans_up_a_lab_that_failed_halfway(ganeti_lab, ganeti_machine_before,
                                                  ganeti_version, monkeypatch):
    """Nodes built, cluster init fails: ``down`` still removes everything."""
    assert not ganeti_lab.is_up  # after the test above

    def broken_init(self, guest):
        raise LabError("injected: cluster init failed")

    monkeypatch.setattr(Lab, "_init_cluster", broken_init)
    lab = Lab()
    with pytest.raises(LabError, match="injected"):
        lab.up(nodes=2, owner="pytest", version=ganeti_version)
    assert machine.diff(ganeti_machine_before, machine.snapshot()), "nodes were built"
    report = Lab().down()  # a fresh object, as `vm-testbed ganeti down` would be
    assert not report.problems
    assert machine.diff(ganeti_machine_before, machine.snapshot()) == []


def test_sigterm_during_a_run_still_brings_the_lab_down(ganeti_lab, ganeti_machine_before,
                                                        ganeti_version, tmp_path):
    """A CI runner that kills the job: the session fixture turns SIGTERM into teardown."""
    assert not ganeti_lab.is_up
    marker = tmp_path / "up"
    env = dict(os.environ, VMTESTBED_GANETI_NODES="1", VMTESTBED_GANETI_HOOKPACK="0",
               SIGTERM_TARGET_MARKER=str(marker), VMTESTBED_GANETI_VERSIONS=ganeti_version,
               VMTESTBED_GANETI_LOCK_HELD_BY=str(os.getpid()))  # we hold the lab lock
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(Path(__file__).with_name("sigterm_target.py"))],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, child.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "the child lab did not come up"
            time.sleep(0.5)
        assert machine.diff(ganeti_machine_before, machine.snapshot())
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert machine.diff(ganeti_machine_before, machine.snapshot()) == [], out[-2000:]

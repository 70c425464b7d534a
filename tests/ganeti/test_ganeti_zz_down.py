"""Last: ``down`` leaves the machine as the lab found it."""

from __future__ import annotations

import time

import pytest
from vmtestbed.ganeti import machine
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.lab import Lab

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
                                                  monkeypatch):
    """Nodes built, cluster init fails: ``down`` still removes everything."""
    assert not ganeti_lab.is_up  # after the test above

    def broken_init(self, guest):
        raise LabError("injected: cluster init failed")

    monkeypatch.setattr(Lab, "_init_cluster", broken_init)
    lab = Lab()
    with pytest.raises(LabError, match="injected"):
        lab.up(nodes=2)
    assert machine.diff(ganeti_machine_before, machine.snapshot()), "nodes were built"
    report = Lab().down()  # a fresh object, as `vm-testbed ganeti down` would be
    assert not report.problems
    assert machine.diff(ganeti_machine_before, machine.snapshot()) == []

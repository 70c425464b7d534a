"""Last: ``down`` leaves the machine as the lab found it."""

from __future__ import annotations

import time

import pytest
from vmtestbed.ganeti import machine

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

"""A pre hook vetoes a real Ganeti operation, and the job's error says why."""

from __future__ import annotations

import pytest
from vmtestbed.ganeti import compat

from tests.ganeti.scenario import MASTER

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

BAD = "web1.example.test"


def test_policy_vetoes_an_add_with_a_bad_name(ganeti_lab):
    lab = ganeti_lab
    lab.clear_records()
    r = lab.gnt("gnt-instance", "add", "-t", "diskless", "-o", "noop+default", "-B",
                "memory=64", "--no-ip-check", "--no-name-check", "--no-start", "-n", MASTER,
                BAD, check=False)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "hooks execution failed" in err
    assert "instance-add-pre.d/50-hookpack" in err
    assert f"instance name '{BAD}' does not match" in err
    names = lab.gnt("gnt-instance", "list", "--no-headers", "-o", "name").stdout.split()
    assert BAD not in names
    runs = [(rec["node"], rec["phase"]) for n in lab.nodes for rec in lab.records(n)
            if rec["instance"] == BAD]
    assert (MASTER, "pre") in runs
    assert all(phase == "pre" for _, phase in runs), "no post hook after a veto"
    compat.note(lab.version, "action.policy", "vetoes an add with a bad name; Ganeti shows "
                "the hook's message, runs no post hook")

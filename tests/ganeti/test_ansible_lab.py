"""The Ansible role rolled out to the two nodes of the real Ganeti lab over real SSH.

The controller (ansible-playbook, ansible-core pinned in pyproject) runs in the master
node's namespaces and reaches both nodes' sshd over the lab network with the master's
root key, host keys checked (vmtestbed/ganeti/ansible_rollout.py). Steps, in order:
rollout, a second run with changed=0, a Ganeti operation that runs the role-installed
hooks on both nodes, then ``hookpack_state=absent`` leaving every node's hooks tree
exactly as it was before the rollout. Check mode and a second ``absent`` (both changed=0)
are proven on this machine by tests/ansible/test_role_local.py: the same role, the same
tasks, one node (CI time: each costs a whole play over two nodes here).

The session's lab comes with hookpack installed by the lab's own installer: the module
fixture takes those hook entries out first (so only the role's entries can run) and puts
them back at the end for the other lab tests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmtestbed.ganeti import ansible_rollout as ar
from vmtestbed.ganeti import hookpack_install
from vmtestbed.ganeti.lab import Lab

from tests.ganeti.hooktable import expected_nodes
from tests.ganeti.scenario import MASTER

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

RECORD = "/var/log/hookpack/ansible-record.jsonl"  # not the lab installer's record file
OPERATOR_HOOK = "instance-add-post.d/10-operator"  # someone else's hook: must survive
INSTANCE = "inst7.example.test"
NODE2 = "node2.example.test"
LAB_HOOKPACK = str(hookpack_install.VENV / "bin" / "hookpack")


def hooks_tree(lab: Lab, node: str) -> dict[str, str]:
    """Every entry of the node's /etc/ganeti/hooks (dotfiles too): type, mode, content."""
    root = lab.node_file(node, "/etc/ganeti/hooks")
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = f"link -> {os.readlink(p)}"
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"dir {st.st_mode & 0o7777:o}"
            else:
                out[rel] = (f"file {st.st_mode & 0o7777:o} "
                            f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
    return out


def node_names(lab: Lab) -> list[str]:
    return [n.name for n in lab.nodes]


class Rollout:
    def __init__(self, lab: Lab, timings: dict[str, float]) -> None:
        self.lab = lab
        self.timings = timings

    def play(self, label: str, *extra: str) -> ar.PlayResult:
        t0 = time.monotonic()
        result = ar.play(self.lab, *extra)
        self.timings[f"ansible.{label}"] = round(time.monotonic() - t0, 1)
        print(f"\n-- ansible-playbook {label} ({' '.join(extra) or 'present'}): "
              f"{self.timings[f'ansible.{label}']} s\n{result.recap_text()}")
        assert result.returncode == 0, result.failure()
        assert sorted(result.recap) == sorted(node_names(self.lab)), result.failure()
        return result


@pytest.fixture(scope="module")
def rollout(ganeti_lab: Lab, ganeti_timings: dict[str, float]) -> Iterator[Rollout]:
    lab = ganeti_lab
    had_lab_hookpack = {}
    for node in node_names(lab):
        hooks = lab.node_file(node, "/etc/ganeti/hooks")
        had_lab_hookpack[node] = any(hooks.glob("*/50-hookpack"))
        if had_lab_hookpack[node]:
            lab.run_on(node, [LAB_HOOKPACK, "hooks", "uninstall", "--root", "/etc/ganeti/hooks"],
                       check=True)
        op = hooks / OPERATOR_HOOK
        op.parent.mkdir(parents=True, exist_ok=True)
        op.write_text("#!/bin/sh\n# an operator's own hook: hookpack must leave it alone\nexit 0\n")
        op.chmod(0o755)
        lab.node_file(node, RECORD).unlink(missing_ok=True)
    t0 = time.monotonic()
    config = ar.lab_config(record_path=RECORD)
    ar.prepare(lab, config)
    ganeti_timings["ansible.prepare (wheels, inventory)"] = round(time.monotonic() - t0, 1)
    try:
        yield Rollout(lab, ganeti_timings)
    finally:
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", INSTANCE, check=False)
        for node in node_names(lab):
            if any(lab.node_file(node, "/etc/ganeti/hooks").glob("*/50-hookpack")) and \
                    lab.node_file(node, ar.LAB_PATHS["hookpack_venv"]).exists():
                # a failed step left the role's entries: take them out with its own hookpack
                lab.run_on(node, [f"{ar.LAB_PATHS['hookpack_venv']}/bin/hookpack", "hooks",
                                  "uninstall", "--root", "/etc/ganeti/hooks"])
            lab.node_file(node, "/etc/ganeti/hooks").joinpath(OPERATOR_HOOK).unlink(
                missing_ok=True)
            for path in ("/var/lib/hookpack/opt", "/etc/hookpack/ansible", *ar.STAND_INS):
                shutil.rmtree(lab.node_file(node, path), ignore_errors=True)
            lab.node_file(node, RECORD).unlink(missing_ok=True)
            if had_lab_hookpack[node]:
                hookpack_install.install_on(lab.node(node))
        shutil.rmtree(ar.WORK, ignore_errors=True)


@pytest.fixture(scope="module")
def before(rollout: Rollout) -> dict[str, dict[str, str]]:
    lab = rollout.lab
    snap = {node: hooks_tree(lab, node) for node in node_names(lab)}
    for node, tree in snap.items():
        assert OPERATOR_HOOK in tree and not any(k.endswith("50-hookpack") for k in tree), node
    return snap


def test_rollout_converges_and_a_second_run_changes_nothing(rollout: Rollout, before):
    lab = rollout.lab
    first = rollout.play("rollout")
    for node, counts in first.recap.items():
        assert counts["changed"] > 0 and counts["failed"] == 0, (node, first.recap)
    second = rollout.play("second run")
    for node, counts in second.recap.items():
        assert counts["changed"] == 0, (node, second.failure())

    venv = ar.LAB_PATHS["hookpack_venv"]
    for node in node_names(lab):
        entry = lab.node_file(node, "/etc/ganeti/hooks/instance-add-post.d/50-hookpack")
        text = entry.read_text()
        assert f"hp_python='{venv}/bin/python'" in text, node
        assert f"hp_config_arg='{ar.LAB_PATHS['hookpack_config_dir']}/hookpack.toml'" in text
        home = lab.node_file(node, ar.LAB_PATHS["hookpack_home"])
        assert os.readlink(home / "current").startswith("versions/"), node
        doctor = lab.run_on(node, [f"{venv}/bin/hookpack", "doctor", "--config",
                                   f"{ar.LAB_PATHS['hookpack_config_dir']}/hookpack.toml"])
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        # no systemd as PID 1 in the lab: the unit files are installed, nothing enabled;
        # jobwatch on every master candidate (the role reads ssconf_master_candidates),
        # the hook server on every node
        units = sorted(p.name for p in lab.node_file(node, "/var/lib/hookpack/systemd").iterdir())
        expected = ["hookpack-hook-server.service", "hookpack-outbox-flush.service",
                    "hookpack-outbox-flush.timer"]
        candidates = lab.node_file(node, "/var/lib/ganeti/ssconf_master_candidates")
        if node == MASTER or node in candidates.read_text().split():
            expected.insert(1, "hookpack-jobwatch.service")
        assert units == expected, (node, units)
    assert "Enable and start the units" in first.stdout  # listed, skipped: not systemd


def test_a_ganeti_operation_runs_the_role_installed_hooks(rollout: Rollout):
    lab = rollout.lab
    t0 = time.monotonic()
    lab.gnt("gnt-instance", "add", "-t", "diskless", "-o", "noop+default", "-B", "memory=64",
            "--no-ip-check", "--no-name-check", "--no-start", "--no-install", "-n", NODE2,
            INSTANCE)
    lab.gnt("gnt-instance", "remove", "-f", INSTANCE)
    rollout.timings["ansible.ganeti add+remove"] = round(time.monotonic() - t0, 1)
    runs: dict[tuple[str, str], set[str]] = {}
    for node in node_names(lab):
        for rec in lab.records(node, path=RECORD):
            if rec["instance"] == INSTANCE:
                runs.setdefault((rec["hpath"], rec["phase"]), set()).add(rec["node"])
    for hpath in ("instance-add", "instance-remove"):
        want = expected_nodes(hpath, master=MASTER, primary=NODE2)
        for phase in ("pre", "post"):
            assert runs.get((hpath, phase)) == want[phase], (hpath, phase, runs)
    assert runs[("instance-add", "post")] == set(node_names(lab))  # both nodes ran them


def test_absent_leaves_the_hooks_trees_as_before(rollout: Rollout, before):
    lab = rollout.lab
    gone = rollout.play("absent", "-e", "hookpack_state=absent")
    for node, counts in gone.recap.items():
        assert counts["changed"] > 0, (node, gone.recap)
    for node in node_names(lab):
        assert hooks_tree(lab, node) == before[node], node
        for key in ("hookpack_venv", "hookpack_bin_link", "hookpack_config_dir"):
            assert not lab.node_file(node, ar.LAB_PATHS[key]).exists(), (node, key)
        assert not list(lab.node_file(node, "/var/lib/hookpack/systemd").iterdir()), node

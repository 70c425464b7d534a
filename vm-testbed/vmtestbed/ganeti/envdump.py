"""Record the environment Ganeti gives its hooks, as golden fixtures for hookpack's tests.

A hook that dumps its environment (:data:`DUMP_HOOK`, a shell script, nothing of
hookpack's) goes into every instance hook directory of every node; a fixed scenario runs
on the lab (:func:`record`); each dump is written to ``<hpath>-<phase>-<node>.env`` in the
format of ``tests/fixtures/ganeti-env-samples`` (a header naming the node, then the
environment sorted). Which instance a file shows: node1's files show inst1 (node1 is
its primary and the master), node2's show inst3 (node2 its primary), the migrate files
show inst2 going from node1 to node2.

``vm-testbed ganeti record-env OUT`` runs it on the lab that is up (either version); the
hook scripts and the scenario's instances are removed afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vmtestbed.ganeti.layout import instance_name

if TYPE_CHECKING:
    from vmtestbed.ganeti.lab import Lab

DUMP_DIR = "/var/log/hookpack/envdump"  # a node-private directory
DUMP_HOOK = f"""#!/bin/sh
# vmtestbed.ganeti.envdump: write this hook's environment (one file per path, phase, instance)
out="{DUMP_DIR}/$GANETI_HOOKS_PATH-$GANETI_HOOKS_PHASE-$GANETI_INSTANCE_NAME.env"
{{ echo "# recorded on $(hostname) by a hook that dumps its environment"
  env | LC_ALL=C sort; }} > "$out"
"""
HOOK_NAME = "00-vmtestbed-envdump"
HPATHS = ("instance-add", "instance-start", "instance-stop", "instance-migrate", "disk-grow")
# file stem -> (instance index whose dump it is)
WANTED = {
    **{f"{h}-{p}-node1": 1 for h in ("instance-start", "disk-grow") for p in ("pre", "post")},
    **{f"{h}-{p}-node2": 3 for h in ("instance-start", "disk-grow") for p in ("pre", "post")},
    "instance-add-post-node1": 1, "instance-add-post-node2": 3,
    "instance-stop-post-node1": 1, "instance-stop-post-node2": 3,
    **{f"instance-migrate-{p}-node{n}": 2 for p in ("pre", "post") for n in (1, 2)},
}


def record(lab: Lab, out: Path) -> list[Path]:
    """Run the scenario with the dump hook in place; write the dumps to ``out``."""
    _install(lab)
    try:
        _scenario(lab)
        return _collect(lab, out)
    finally:
        for i in (1, 2, 3):
            lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", instance_name(i),
                    check=False)
        _uninstall(lab)


def _install(lab: Lab) -> None:
    for node in lab.nodes:
        dumps = node.host_path(DUMP_DIR)
        shutil.rmtree(dumps, ignore_errors=True)
        dumps.mkdir(parents=True)
        for hpath in HPATHS:
            for phase in ("pre", "post"):
                d = node.host_path(f"/etc/ganeti/hooks/{hpath}-{phase}.d")
                d.mkdir(parents=True, exist_ok=True)
                script = d / HOOK_NAME
                script.write_text(DUMP_HOOK)
                script.chmod(0o755)


def _uninstall(lab: Lab) -> None:
    for node in lab.nodes:
        for script in node.host_path("/etc/ganeti/hooks").glob(f"*.d/{HOOK_NAME}"):
            script.unlink()


def _scenario(lab: Lab) -> None:
    for index, node in ((1, 1), (3, 2), (2, 1)):
        lab.add_instance(index, node=node)
    for index in (1, 3):
        name = instance_name(index)
        lab.gnt("gnt-instance", "grow-disk", name, "0", "64M")
        lab.gnt("gnt-instance", "shutdown", "--timeout=0", name)
        lab.gnt("gnt-instance", "startup", name)
    lab.gnt("gnt-instance", "migrate", "-f", instance_name(2))


def _collect(lab: Lab, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, index in sorted(WANTED.items()):
        node = stem.rsplit("-", 1)[1]
        hpath_phase = stem.rsplit("-", 1)[0]
        src = lab.node(node).host_path(f"{DUMP_DIR}/{hpath_phase}-{instance_name(index)}.env")
        dst = out / f"{stem}.env"
        shutil.copyfile(src, dst)
        written.append(dst)
    return written

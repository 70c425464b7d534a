"""Roll hookpack out to the lab's nodes with the project's playbook (``ansible/site.yml``).

Over real SSH: the controller, ``ansible-playbook`` from the checkout's ``.venv``
(ansible-core pinned in pyproject's ``ansible`` extra), runs in the master node's network
namespace, on this machine's filesystem (a 3.1 node's Debian 13 root has no such venv).
There its OpenSSH client connects as root to each node's own sshd on 198.51.100.x (node1
included: the controller goes through ssh to itself too), with the master's root key
that ``gnt-cluster init`` made (read from the master's private ``/root/.ssh``) and that
is authorized on every node. Host keys are checked
(``host_key_checking = True``) against a known_hosts file built from each node's own
``/etc/ssh/ssh_host_*_key.pub``, read from the node's private directory.

The nodes share this machine's filesystem except their private directories, so every
path of the role that would otherwise be one directory for all nodes is pointed into a
node-private one by inventory variables (:data:`LAB_PATHS`). Two directories stand in for
``/usr/local/sbin`` and ``/etc/systemd/system``, which exist on every real node: they are
made before the rollout (:data:`STAND_INS`). ``/etc/hookpack`` itself is a bind mount here
(it cannot be removed), so the role's config directory is a directory below it.

The nodes have no route to a package index: the controller's side (this machine) builds
hookpack's wheel and its dependencies' wheels once (:func:`build_wheels`), and the role
copies them to each node (``hookpack_wheel`` + ``hookpack_wheelhouse``) and installs with
``pip --no-index``. Everything here lives in ``/var/lib/vmtestbed-lab/ansible``, which
``down`` removes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmtestbed.ganeti import hookpack_install, proc
from vmtestbed.ganeti.errors import LabError
from vmtestbed.ganeti.hookpack_install import NAME_PATTERN, RECORD_PATH
from vmtestbed.ganeti.layout import STATE_DIR

if TYPE_CHECKING:
    from vmtestbed.ganeti.lab import Lab

REPO = Path(__file__).resolve().parents[3]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = REPO / ".venv" / "bin"
WORK = STATE_DIR / "ansible"
WHEEL_DIR = WORK / "dist"          # hookpack's wheel
WHEELHOUSE = WORK / "wheelhouse"   # its dependencies' wheels
REMOTE_TMP = "/run/ansible-tmp"    # on the nodes: their private tmpfs /run

LAB_PATHS = {
    "hookpack_home": "/var/lib/hookpack/opt/hookpack",
    "hookpack_venv": "/var/lib/hookpack/opt/hookpack/current/venv",  # the role's layout
    "hookpack_bin_link": "/var/lib/hookpack/bin/hookpack",
    "hookpack_systemd_dir": "/var/lib/hookpack/systemd",
    "hookpack_config_dir": "/etc/hookpack/ansible",
}
STAND_INS = ("/var/lib/hookpack/bin", "/var/lib/hookpack/systemd")


def lab_config(record_path: str = RECORD_PATH) -> dict[str, Any]:
    """The lab's hookpack config (as ``hookpack_install.LAB_CONFIG``) as ``hookpack_config``."""
    return {
        "log": {"syslog": False},  # no syslog daemon in the lab's nodes
        "record": {"enabled": True, "path": record_path, "include_env": True},
        "policy": {"enabled": True, "name_pattern": NAME_PATTERN},
    }


@dataclass
class PlayResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    recap: dict[str, dict[str, int]]  # host -> {"ok": .., "changed": .., ...}

    @property
    def changed(self) -> int:
        return sum(r.get("changed", 0) for r in self.recap.values())

    def recap_text(self) -> str:
        """The PLAY RECAP block as ansible printed it."""
        _, _, tail = self.stdout.rpartition("PLAY RECAP")
        return ("PLAY RECAP" + tail).rstrip() if tail else "(no PLAY RECAP)"

    def failure(self) -> str:
        return f"exit {self.returncode}\n{self.stdout[-6000:]}\n{self.stderr[-3000:]}"


def parse_recap(stdout: str) -> dict[str, dict[str, int]]:
    _, _, tail = stdout.rpartition("PLAY RECAP")
    out: dict[str, dict[str, int]] = {}
    for line in tail.splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def build_wheels(lab: Lab) -> Path:
    """hookpack's wheel (reproducible: SOURCE_DATE_EPOCH as the role does) and its
    dependencies' wheels for the nodes' Python; returns hookpack's wheel."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    return hookpack_install.build_wheels(hookpack_install.node_python(lab.master), WHEEL_DIR,
                                         WHEELHOUSE, python=str(VENV_BIN / "python"), env=env)


def known_hosts(lab: Lab) -> str:
    """Each node's host keys, from its own /etc/ssh, under its name and address."""
    lines = []
    for node in lab.nodes:
        for pub in sorted(lab.node_file(node, "/etc/ssh").glob("ssh_host_*_key.pub")):
            kind, key = pub.read_text().split()[:2]
            lines.append(f"{node.name},{node.spec.ip} {kind} {key}")
    if not lines:
        raise LabError("no ssh host keys in the nodes' /etc/ssh")
    return "\n".join(lines) + "\n"


def inventory(lab: Lab, wheel: Path, config: dict[str, Any],
              secrets: dict[str, str] | None = None) -> dict[str, Any]:
    """The lab's inventory: every node, connection over ssh as root, node-private paths."""
    return {"ganeti_nodes": {
        "hosts": {n.name: {"ansible_host": n.spec.ip} for n in lab.nodes},
        "vars": {
            "ansible_user": "root",
            "ansible_become": False,  # root already; the nodes have no sudo
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={WORK / 'known_hosts'} "
                                       "-o IdentitiesOnly=yes -o IdentityFile="
                                       f"{lab.master.host_path('/root/.ssh/id_rsa')}",
            "ansible_remote_tmp": REMOTE_TMP,
            **LAB_PATHS,
            # the nodes share this machine's /usr: a .deb would change its system Python
            "hookpack_install_method": "venv",
            "hookpack_wheel": str(wheel),
            "hookpack_wheelhouse": str(WHEELHOUSE),
            "hookpack_config": config,
            "hookpack_secrets": secrets or {},
        },
    }}


def prepare(lab: Lab, config: dict[str, Any] | None = None, wheel: Path | None = None,
            secrets: dict[str, str] | None = None) -> Path:
    """Wheels (unless given), known_hosts, inventory, stand-in directories; return the
    inventory file. ``secrets``: the role's ``hookpack_secrets`` (name -> value, written
    to ``<config dir>/secrets/<name>``)."""
    if not (VENV_BIN / "ansible-playbook").exists():
        raise LabError(f"{VENV_BIN / 'ansible-playbook'} is missing: run scripts/setup")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "tmp").mkdir(exist_ok=True)
    (WORK / "cp").mkdir(exist_ok=True)
    wheel = wheel or build_wheels(lab)
    (WORK / "known_hosts").write_text(known_hosts(lab))
    inv = WORK / "inventory.yml"  # JSON is YAML
    inv.write_text(json.dumps(inventory(lab, wheel, config or lab_config(), secrets), indent=2)
                   + "\n")
    for node in lab.nodes:
        node.run(["mkdir", "-p", *STAND_INS], check=True)
    return inv


def play(lab: Lab, *extra: str, inventory_file: Path | None = None,
         timeout: float = 900) -> PlayResult:
    """``ansible-playbook site.yml`` run by the controller in the master's network
    namespace."""
    inv = inventory_file or WORK / "inventory.yml"
    if not inv.exists():
        raise LabError(f"{inv}: no inventory; call prepare() first")
    env = {
        "HOME": "/root",
        "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(WORK / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(WORK / "cp"),
        "ANSIBLE_PIPELINING": "True",  # modules over the open ssh session: fewer round trips
    }
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
            str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(ANSIBLE_DIR / "site.yml"),
            *extra]
    try:
        r = proc.run(lab.master.in_netns(argv), where=lab.master.name, check=False,
                     timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"ansible-playbook did not finish in {timeout:.0f} s") from e
    return PlayResult(argv, r.returncode, r.stdout, r.stderr, parse_recap(r.stdout))

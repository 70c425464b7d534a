"""Install hookpack on the lab's nodes the way an operator does.

One virtualenv for all nodes (the filesystem is shared, except the nodes' private
directories), ``pip install <repo>`` into it, then on each node: the config in the
node's private ``/etc/hookpack`` and ``hookpack hooks install`` into its private
``/etc/ganeti/hooks``. Replace this by the Ansible role once it exists.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vmtestbed.ganeti import proc
from vmtestbed.ganeti.node import Node

VENV = Path("/opt/hookpack-lab/venv")
REPO = Path(__file__).resolve().parents[3]
RECORD_PATH = "/var/log/hookpack/record.jsonl"
NAME_PATTERN = r"^inst[0-9]+\.example\.test$"

LAB_CONFIG = f"""\
# hookpack configuration of a vm-testbed Ganeti lab node (written by vmtestbed.ganeti)
[log]
syslog = false  # no syslog daemon in the lab's nodes

[record]            # the recording action: one JSON line per hook run on this node
enabled = true
path = "{RECORD_PATH}"
include_env = true  # adds the full GANETI_* environment to each line

[policy]            # pre-hook veto on instance-add/rename (runs on the master)
enabled = true
name_pattern = '{NAME_PATTERN}'
"""


def build_venv(repo: Path = REPO, venv: Path = VENV) -> bool:
    """(Re)build the venv with hookpack from ``repo``; return whether the lab created
    ``venv.parent`` (so ``down`` removes only what it made)."""
    created = not venv.parent.exists()
    if venv.exists():
        shutil.rmtree(venv)
    proc.run(["/usr/bin/python3", "-m", "venv", str(venv)])
    proc.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
              str(repo)], timeout=600)
    return created


def install_on(node: Node, venv: Path = VENV, config: str = LAB_CONFIG) -> list[str]:
    """Write the node's config, lay out the hook entries; return the installer's output."""
    cfg = node.host_path("/etc/hookpack/hookpack.toml")
    cfg.write_text(config)
    cfg.chmod(0o640)
    hookpack = str(venv / "bin/hookpack")
    node.run([hookpack, "config", "check"], check=True)
    out = node.run([hookpack, "hooks", "install", "--root", "/etc/ganeti/hooks"], check=True)
    start_hook_server(node, venv)
    return out.stdout.splitlines()


HOOK_SERVER_SOCKET = "/run/hookpack/hookserver.sock"  # the lab config's run_dir (default)
HOOK_SERVER_LOG = "/var/log/hookpack/hook-server.log"


def start_hook_server(node: Node, venv: Path = VENV, timeout: float = 60) -> int:
    """(Re)start `hookpack hook-server` in the node, as the role's unit runs it on a
    systemd node; returns its pid. The one this lab started before is stopped first (its
    pid from the server's lock file); the lab's `down` kills it with the node."""
    stop_hook_server(node, timeout)
    node.run(["sh", "-c", f"mkdir -p {Path(HOOK_SERVER_LOG).parent} && setsid -f "
                          f"{venv / 'bin/hookpack'} hook-server >>{HOOK_SERVER_LOG} 2>&1 "
                          "</dev/null"], check=True)
    probe = ("import socket, sys, time\n"
             "end = time.monotonic() + float(sys.argv[2])\n"
             "while True:\n"
             "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
             "    try:\n"
             "        s.connect(sys.argv[1]); break\n"
             "    except OSError:\n"
             "        if time.monotonic() > end: sys.exit('hook server did not come up')\n"
             "        time.sleep(0.05)\n"
             "print(open(sys.argv[1] + '.lock').read().strip())\n")
    out = node.run(["/usr/bin/python3", "-c", probe, HOOK_SERVER_SOCKET, str(timeout)],
                   check=True, timeout=timeout + 10)
    return int(out.stdout.strip())


def stop_hook_server(node: Node, timeout: float = 60) -> None:
    """Stop the hook server this lab started in the node, if one runs (its pid from its
    lock file, checked to be a hook server's)."""
    node.run(["sh", "-c", f"pid=$(cat {HOOK_SERVER_SOCKET}.lock 2>/dev/null) && "
                          "grep -qa hook-server /proc/$pid/cmdline 2>/dev/null && "
                          "kill $pid && while kill -0 $pid 2>/dev/null; do sleep 0.1; done; "
                          "true"], check=True, timeout=timeout)

"""Install hookpack on the lab's nodes the way an operator does.

One virtualenv for all nodes (the filesystem is shared, except the nodes' private
directories), ``pip install <repo>`` into it, then on each node: the config in the
node's private ``/etc/hookpack`` and ``hookpack hooks install`` into its private
``/etc/ganeti/hooks``. Replace this by the Ansible role once it exists.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vmtestbed.ganeti import proc
from vmtestbed.ganeti.errors import LabError
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


def node_python(node: Node) -> str:
    """The node's Python version: ``3.11`` (a 3.0 lab, this host's) or ``3.13`` (3.1)."""
    return node.run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    check=True).stdout.strip()


def build_wheels(python_version: str, wheel_dir: Path, wheelhouse: Path, *,
                 python: str = sys.executable, repo: Path = REPO,
                 env: dict[str, str] | None = None) -> Path:
    """hookpack's wheel into ``wheel_dir`` (built here, where the package index is
    reachable) and its dependencies' wheels for Python ``python_version`` into
    ``wheelhouse`` (binary wheels are per version: the nodes' Python may not be this
    one); returns hookpack's wheel. Both directories are emptied first."""
    for d in {wheel_dir, wheelhouse}:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    pip = [python, "-m", "pip"]
    proc.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(wheel_dir), str(repo)],
             timeout=900, env=env)
    wheels = list(wheel_dir.glob("hookpack-*.whl"))
    if len(wheels) != 1:
        raise LabError(f"pip wheel made {len(wheels)} hookpack wheels in {wheel_dir}")
    proc.run([*pip, "download", "-q", "--only-binary=:all:", "--python-version",
              python_version, "--platform", "manylinux_2_28_x86_64", "--platform",
              "manylinux2014_x86_64", "--dest", str(wheelhouse), str(wheels[0])],
             timeout=900, env=env)
    if wheelhouse != wheel_dir:
        (wheelhouse / wheels[0].name).unlink(missing_ok=True)  # pip download copies it too
    return wheels[0]


def build_venv_on(node: Node, venv_dir: Path, venv: Path = VENV) -> None:
    """Build the venv inside a chrooted node (a 3.1 lab: the tree's Python, 3.13).

    ``venv_dir`` is the host directory the node sees at ``venv.parent``. The node has no
    way to the package index: the host fills ``wheels`` there (:func:`build_wheels`);
    the node's pip installs from it only."""
    build_wheels(node_python(node), venv_dir / "wheels", venv_dir / "wheels")
    node.run(["python3", "-m", "venv", "--clear", str(venv)], check=True)
    node.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
              "--no-index", "--find-links", str(venv.parent / "wheels"), "hookpack"],
             check=True, timeout=600)


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
    systemd node; returns its pid. The one serving before is stopped first; the lab's
    `down` kills it with the node."""
    stop_hook_server(node, venv, timeout)
    node.run(["sh", "-c", f"mkdir -p {Path(HOOK_SERVER_LOG).parent} && setsid -f "
                          f"{venv / 'bin/hookpack'} hook-server >>{HOOK_SERVER_LOG} 2>&1 "
                          "</dev/null"], check=True)
    return int(_server_pid(node, venv, "up", timeout))


def stop_hook_server(node: Node, venv: Path = VENV, timeout: float = 60) -> None:
    """Stop the hook server serving in the node, if one does."""
    _server_pid(node, venv, "down", timeout)


# hookpack's own answer to "who serves" (the pid holding the socket's lock, the same
# reading as `hookpack doctor`): wait until one does ("up", printing its pid), or stop it
# and wait until none does ("down").
_SERVER_PID = """\
import os, signal, sys, time
from pathlib import Path
from hookpack.hookserver import serving_pid
sock, want, end = Path(sys.argv[1]), sys.argv[2], time.monotonic() + float(sys.argv[3])
if want == "down" and (pid := serving_pid(sock)):
    os.kill(pid, signal.SIGTERM)
while (serving_pid(sock) is None or not sock.is_socket()) == (want == "up"):
    if time.monotonic() > end:
        sys.exit(f"hook server not {want} after {sys.argv[3]} s")
    time.sleep(0.05)
print(serving_pid(sock) or "")
"""


def _server_pid(node: Node, venv: Path, want: str, timeout: float) -> str:
    out = node.run([str(venv / "bin/python"), "-c", _SERVER_PID, HOOK_SERVER_SOCKET, want,
                    str(timeout)], check=True, timeout=timeout + 10)
    return out.stdout.strip()

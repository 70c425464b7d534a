"""A broken hookpack install never blocks Ganeti (issue 17), in the real lab.

One lab; the install is broken on every node in turn (interpreter missing, hookpack not
importable, a dependency not importable, config invalid). In each state
`gnt-instance add`, `startup` and `gnt-node modify` succeed (and `migrate`, in the first
state only: the same entry script stands in every hooks directory; CI time), and the entry's
one line is in the log file the entry writes to (the lab's nodes have no syslog daemon;
the same line goes to syslog through `logger` where there is one). The lab's install
comes back at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from vmtestbed.ganeti import compat, hookpack_install
from vmtestbed.ganeti.lab import Lab

from tests.ganeti.scenario import MASTER

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]

VENV = hookpack_install.VENV
HOOKPACK = str(VENV / "bin/hookpack")
NODEPS = VENV.parent / "nodeps"  # a venv that imports hookpack but has no pynetbox
LOG = "/var/log/hookpack/hookpack.log"
CONFIG = "/etc/hookpack/hookpack.toml"
GOOD = hookpack_install.LAB_CONFIG.replace("[log]\n", f'[log]\nfile = "{LOG}"\n', 1)
TOKEN = "/etc/hookpack/netbox.token"
NETBOX = f'\n[netbox]\nenabled = true\nurl = "http://127.0.0.1:9"\ntoken_file = "{TOKEN}"\n'


@pytest.fixture(scope="module")
def lab(ganeti_lab: Lab) -> Iterator[Lab]:
    ganeti_lab.run_on(MASTER, ["/usr/bin/python3", "-m", "venv", "--without-pip",
                               str(NODEPS)], check=True)
    # the master's view: a 3.1 node has its own /opt/hookpack-lab
    site = next((ganeti_lab.node_root(MASTER) / str(NODEPS).lstrip("/"))
                .glob("lib/python3*/site-packages"))
    (site / "hookpack-checkout.pth").write_text(f"{hookpack_install.REPO}\n")
    try:
        yield ganeti_lab
    finally:
        for node in ganeti_lab.nodes:
            _install(ganeti_lab, node, hookpack_install.LAB_CONFIG, None)
            ganeti_lab.node_file(node, LOG).unlink(missing_ok=True)
        ganeti_lab.run_on(MASTER, ["rm", "-rf", str(NODEPS)])


def _install(lab: Lab, node, config: str, python: str | None) -> None:
    path = lab.node_file(node, CONFIG)
    path.write_text(config)
    path.chmod(0o600)
    argv = [HOOKPACK, "hooks", "install", "--root", "/etc/ganeti/hooks"]
    lab.run_on(node, argv + (["--python", python] if python else []), check=True)


def _break(lab: Lab, state: str) -> None:
    for node in lab.nodes:
        lab.node_file(node, LOG).unlink(missing_ok=True)
        if state == "interpreter missing":
            _install(lab, node, GOOD, "/opt/hookpack-lab/gone/bin/python")
        elif state == "hookpack not importable":
            _install(lab, node, GOOD, "/usr/bin/python3")
        elif state == "dependency not importable":
            token = lab.node_file(node, TOKEN)
            token.write_text("0123456789abcdef\n")
            token.chmod(0o600)
            _install(lab, node, GOOD + NETBOX, str(NODEPS / "bin/python"))
        elif state == "config invalid":
            _install(lab, node, GOOD, None)
            lab.node_file(node, CONFIG).write_text(GOOD + "[hook\n")


EXPECTED = {  # a line each broken state leaves in the master's log
    "interpreter missing": "hookpack: actions did not run for instance-add/pre: interpreter "
                           "/opt/hookpack-lab/gone/bin/python is missing or not executable",
    "hookpack not importable": "hookpack: actions did not run for instance-add/pre: cannot "
                               "import hookpack: ModuleNotFoundError: No module named "
                               "'hookpack'; the operation goes on",
    "dependency not importable": "failed: cannot import a dependency: ModuleNotFoundError: No "
                                 "module named 'pynetbox'; reinstall hookpack with its "
                                 "dependencies (instance-add/post",
    "config invalid": f"hookpack: actions did not run for instance-add/pre: {CONFIG}: not "
                      "valid TOML: ",
}


MIGRATE_IN = "interpreter missing"


@pytest.mark.parametrize("state", list(EXPECTED))
def test_ganeti_operations_succeed_on_a_broken_install(state, lab, ganeti_timings):
    index = 40 + list(EXPECTED).index(state)
    name = f"inst{index}.example.test"
    _break(lab, state)
    started = time.monotonic()
    try:
        lab.add_instance(index, MASTER, start=False)
        lab.gnt("gnt-instance", "startup", name)
        if state == MIGRATE_IN:
            lab.gnt("gnt-instance", "migrate", "-f", name)
        other = next(n.name for n in lab.nodes if n.name != MASTER)
        lab.gnt("gnt-node", "modify", "--drained=no", other)
    finally:
        lab.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name, check=False)
    ganeti_timings[f"failsafe.{state}"] = round(time.monotonic() - started, 1)
    log = lab.node_file(MASTER, LOG).read_text()
    print(f"--- {state}: {LOG} on the master ---\n{log}")
    assert EXPECTED[state] in log
    lines = [line for line in log.splitlines() if "did not run" in line or "pynetbox" in line]
    if state == "dependency not importable":
        assert all(" failed: " in line and "did not run" not in line for line in lines)
    else:
        hpaths = {line.split(" for ", 1)[1].split(":", 1)[0] for line in lines}
        want = {"instance-add/pre", "instance-start/pre", "node-modify/pre"}
        if state == MIGRATE_IN:
            want |= {"instance-migrate/pre", "instance-migrate/post"}
        assert want <= hpaths, hpaths
        # one line per entry run: never a traceback
    assert "Traceback" not in log
    compat.note(lab.version, "action.broken_install", "add, startup, node modify and migrate "
                "succeed with the interpreter missing, hookpack or a dependency not "
                "importable, or the config invalid; one line each in the log")

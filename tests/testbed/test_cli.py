"""The human command: vm-testbed up, status, down."""

import json
import subprocess
from pathlib import Path

import pytest
from vmtestbed.cli import STATE_ROOT
from vmtestbed.console import SerialConsole
from vmtestbed.disks import loop_devices

CLI = Path(__file__).resolve().parents[2] / "vm-testbed" / "vm-testbed"

pytestmark = [pytest.mark.qemu, pytest.mark.netns, pytest.mark.slow]


def _cli(*args):
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120,
                          check=True).stdout


def test_up_status_down():
    out = _cli("up", "--guests", "1", "--fake-vms", "1", "--loop")
    name = next(line.split()[1] for line in out.splitlines() if line.startswith("up: "))
    try:
        state = json.loads((STATE_ROOT / name / "state.json").read_text())
        assert name in _cli("status", name)
        guest = state["guests"]["guest0"]
        # the testbed outlives the command: its console answers a new client
        console = SerialConsole(Path(guest["serial"]))
        try:
            assert console.run("hostname").strip() == "guest0"
        finally:
            console.close()
    finally:
        _cli("down", name)
    assert not (STATE_ROOT / name).exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in netns
    still = {back for dev, back in loop_devices().items()
             if dev in state["kvmnode"]["loop_devices"]}
    assert not still & set(state["kvmnode"]["loop_backings"])

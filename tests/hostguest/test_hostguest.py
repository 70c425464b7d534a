"""vmtestbed.hostguest: Debian's kernel under TCG, the host's root shared read-only."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
from vmtestbed.hostguest import DEFAULT_MODULES, module_load_order
from vmtestbed.kernel import stock_kernel

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_module_load_order_puts_dependencies_first():
    order = module_load_order(stock_kernel().modules_dir, ["virtiofs", "br_netfilter"])
    names = [Path(m).name for m in order]
    assert names.index("fuse.ko") < names.index("virtiofs.ko")
    assert names.index("virtio.ko") < names.index("virtiofs.ko")
    assert names.index("bridge.ko") < names.index("br_netfilter.ko")
    assert names[-1] == "br_netfilter.ko"


def test_guest_runs_host_userspace_on_stock_kernel(run_in_host_guest):
    """One boot: kernel and modules, host Python + venv, read-only host, exit status."""
    nonce = secrets.token_hex(4)
    probe = Path("/var/tmp") / f"hpt-hostguest-{nonce}"
    # The command runs from a directory under /tmp (as from a checkout cloned there):
    # the guest's fresh /tmp keeps it, and only it.
    workdir = Path("/tmp") / f"hpt-hostguest-{nonce}"
    other = Path("/tmp") / f"hpt-hostguest-other-{nonce}"
    workdir.mkdir()
    other.write_text("host only")
    script = workdir / "probe.py"
    script.write_text(
        "import os, platform, subprocess, sys\n"
        "print('KERNEL', platform.release())\n"
        "print('CWD', os.getcwd())\n"
        f"print('OTHER', os.path.exists({str(other)!r}))\n"
        "print('PREFIX', sys.prefix)\n"
        "import hookpack, vmtestbed\n"
        "print('IMPORTS ok')\n"
        "mods = open('/proc/modules').read().split()\n"
        f"print('MODULES', *[m for m in {list(DEFAULT_MODULES)!r} if m in mods])\n"
        f"open({str(probe)!r}, 'w').write('guest')\n"
        "print('WROTE', os.path.exists(" + repr(str(probe)) + "))\n"
        "sys.exit(7)\n"
    )
    try:
        run = run_in_host_guest(
            [sys.executable, "probe.py"], cwd=workdir,
            env={"PYTHONPATH": f"{REPO}:{REPO / 'vm-testbed'}"}, timeout=600)
    finally:
        script.unlink(missing_ok=True)
        workdir.rmdir()
        other.unlink()
    print(f"hostguest: boot-to-command {run.boot_to_command:.1f}s guest uptime, "
          f"{run.host_to_command:.1f}s host wall; whole run {run.total:.1f}s")
    assert run.rc == 7, run.console[-3000:]
    lines = dict(line.split(" ", 1) for line in run.output.splitlines() if " " in line)
    assert lines.get("KERNEL", "").endswith("-cloud-amd64"), run.output
    assert lines["KERNEL"] == stock_kernel().version  # the unpacked .deb, not /boot
    assert lines.get("CWD") == str(workdir), run.output
    assert lines.get("OTHER") == "False", run.output  # the rest of /tmp is a fresh tmpfs
    assert lines.get("PREFIX") == sys.prefix, run.output
    assert lines.get("IMPORTS") == "ok", run.output
    loaded = lines.get("MODULES", "").split()
    for needed in ("sch_htb", "cls_fw", "br_netfilter", "xt_CLASSIFY", "xt_physdev"):
        assert needed in loaded, run.output
    assert lines.get("WROTE") == "True", run.output
    assert not run.errors, run.errors
    # the guest's write went to its overlay's tmpfs, never to the host
    assert not probe.exists()


def test_timeout_kills_qemu_and_virtiofsd(host_guest_image):
    """A guest that does not finish in time: TestbedError, and nothing of ours left running."""
    from vmtestbed import host
    from vmtestbed.errors import TestbedError
    from vmtestbed.hostguest import run_in_guest

    before = set(host.owned_pids())
    with pytest.raises(TestbedError, match="no exit within"):
        run_in_guest(["sleep", "600"], image=host_guest_image, timeout=4)
    mine = host.owner_tag()
    left = {pid for pid, owner in host.owned_pids().items() if owner == mine} - before
    assert not left, left


def test_soft_lockup_cuts_the_run_short(host_guest_image):
    """The kernel's soft-lockup report (here printed by the command itself: no lockup
    can be provoked on purpose without a test module the cloud kernel lacks) followed
    by the panic's power-off ends the run at once as GuestKernelLockup, not a timeout."""
    from vmtestbed.errors import GuestKernelLockup
    from vmtestbed.hostguest import run_in_guest

    # the second's pause lets the serial line drain before the power-off (a loaded host
    # once powered the guest off with the report still in the tty's buffer)
    fake_report = ("echo 'watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [python3:1]'"
                   " > /dev/ttyS0; sleep 1; echo o > /proc/sysrq-trigger; sleep 30")
    with pytest.raises(GuestKernelLockup, match="CPU#0 stuck"):
        run_in_guest(["sh", "-c", fake_report], image=host_guest_image, timeout=120)


def test_softlockup_panic_is_on_in_the_guest(run_in_host_guest):
    run = run_in_host_guest(["cat", "/proc/sys/kernel/softlockup_panic"], timeout=120)
    assert run.rc == 0 and run.output.strip() == "1", run.output

"""The testbed leaks nothing: not after a failing test, not over the whole session.

Named test_zz_* so it runs after the other testbed tests.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from vmtestbed import host, leaks
from vmtestbed.disks import DiskSpec, FileDisk, LoopDisk
from vmtestbed.kvmnode import KvmNode, NicSpec
from vmtestbed.netnode import NetNode


class _Boom(Exception):
    pass


@pytest.mark.qemu
@pytest.mark.netns
@pytest.mark.slow
def test_failure_midway_leaves_nothing(guest_image):
    owner = host.owner_tag()
    before = leaks.snapshot(owner=owner)
    seen = {}
    with (
        pytest.raises(_Boom),
        NetNode() as net,
        tempfile.TemporaryDirectory(prefix="hpt-kvm-") as d,
        KvmNode(Path(d), netnode=net, image=guest_image) as node,
    ):
        net.add_fake_vm()
        inst = node.start_instance(
            "leaky.example.test", vcpus=2, wait_boot=False,
            disks=[DiskSpec(LoopDisk(size_mib=32)), DiskSpec(FileDisk(size_mib=16))],
            nics=[NicSpec(), NicSpec()],
        )
        _, stray_fd = net.create_tap()  # a tap nobody handed to QEMU
        os.close(stray_fd)
        seen["during"] = leaks.snapshot(owner=owner) - before
        seen["pid"] = inst.pid
        raise _Boom("test failed while everything was up")
    during = seen["during"]
    assert len(during.netns) == 3  # node, upstream, fake VM
    assert seen["pid"] in during.pids and len(during.loops) == 1
    left = leaks.snapshot(owner=owner) - before
    assert not left, f"leaked {left.describe()}"


def test_session_so_far_left_nothing(leak_baseline):
    left = leaks.snapshot(owner=host.owner_tag()) - leak_baseline
    assert not left, f"leaked {left.describe()}"


_KILLED_RUN = """
import os, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from vmtestbed.disks import DiskSpec, LoopDisk
from vmtestbed.kvmnode import KvmNode, NicSpec
from vmtestbed.netnode import NetNode
net = NetNode()
net.create()
net.add_fake_vm()
node = KvmNode(Path(tempfile.mkdtemp(prefix=f"hpt-{os.getpid()}-")), netnode=net)
node.start_instance("orphan", wait_boot=False, disks=[DiskSpec(LoopDisk(16))], nics=[NicSpec()])
print("READY", flush=True)
sys.stdin.read()
"""


@pytest.mark.qemu
@pytest.mark.netns
@pytest.mark.slow
def test_gc_removes_what_a_killed_run_left(guest_image):
    testbed = Path(__file__).resolve().parents[2] / "vm-testbed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(testbed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        orphans = leaks.snapshot(owner=str(proc.pid))
        assert len(orphans.netns) == 3 and len(orphans.loops) == 1 and len(orphans.pids) == 2
    finally:
        proc.kill()  # SIGKILL: no finalizer runs
        proc.wait()
    subprocess.run([str(testbed / "vm-testbed"), "gc"], check=True, capture_output=True)
    left = leaks.snapshot(owner=str(proc.pid))
    assert not left, f"gc left {left.describe()}"
    assert not list(Path(tempfile.gettempdir()).glob(f"hpt-{proc.pid}-*"))

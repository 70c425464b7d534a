"""The testbed leaks nothing: not after a failing test, not over the whole session.

Named test_zz_* so it runs after the other testbed tests.
"""

import os
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

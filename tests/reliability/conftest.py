"""The reliability tests' node (tests/reliability/relnode.py) as a fixture."""

from __future__ import annotations

import os

import pytest

from tests.reliability.relnode import RelNode


@pytest.fixture
def relnode(tmp_path):
    """A netns + KVM runtime dir + real QEMUs node; torn down (netns, QEMU pids) always."""
    if os.geteuid() != 0 or not os.path.exists("/dev/kvm"):
        pytest.skip("needs root and /dev/kvm")
    node = RelNode(tmp_path / "node")
    try:
        yield node
    finally:
        node.close()

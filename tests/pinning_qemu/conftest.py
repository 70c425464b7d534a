"""Pinning against real QEMU guests: the vm-testbed fixtures (kvmnode, boot_guest)."""

pytest_plugins = ["vmtestbed.pytest_plugin"]

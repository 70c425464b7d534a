"""Testbed tests use the vm-testbed fixtures (guest_image, netnode, kvmnode, boot_guest)."""

pytest_plugins = ["vmtestbed.pytest_plugin"]

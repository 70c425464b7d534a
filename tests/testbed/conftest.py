"""Testbed tests use the vm-testbed fixtures (guest_image, netnode, kvmnode, boot_guest)."""

# The vm-testbed fixtures are registered in tests/conftest.py (pytest allows
# pytest_plugins only in a top-level conftest).

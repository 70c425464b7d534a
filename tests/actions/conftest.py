"""Action tests against real QEMU guests use the vm-testbed guest image fixture.

Imported rather than listed in ``pytest_plugins`` (refused in a non-rootdir conftest).
"""

from vmtestbed.pytest_plugin import guest_image  # noqa: F401 - fixture, by name

"""Action tests against real QEMU guests use the vm-testbed fixtures."""

pytest_plugins = ["vmtestbed.pytest_plugin"]

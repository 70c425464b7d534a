"""The Ganeti lab fixtures (vm-testbed/vmtestbed/ganeti/pytest_plugin.py).

Imported rather than listed in ``pytest_plugins``: pytest refuses that variable in a
conftest that is not at the rootdir.
"""

from vmtestbed.ganeti.pytest_plugin import (  # noqa: F401 - fixtures and a hook, by name
    ganeti_lab,
    ganeti_machine_before,
    ganeti_timings,
    pytest_terminal_summary,
)

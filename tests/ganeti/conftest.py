"""The Ganeti lab fixtures (vm-testbed/vmtestbed/ganeti/pytest_plugin.py).

Imported rather than listed in ``pytest_plugins``: pytest refuses that variable in a
conftest that is not at the rootdir.
"""

from vmtestbed.ganeti.pytest_plugin import (  # noqa: F401 - fixtures and a hook, by name
    ganeti_lab,
    ganeti_lab_lock,
    ganeti_machine_before,
    ganeti_timings,
    pytest_terminal_summary,
)


def pytest_collection_modifyitems(items):
    """test_zz_down.py brings the shared session lab down: whatever else is collected, it
    runs after every other lab test (not only after those whose files sort before it)."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_zz_down")
               if getattr(item, "module", None) else False)

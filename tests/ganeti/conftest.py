"""The Ganeti lab fixtures (vm-testbed/vmtestbed/ganeti/pytest_plugin.py).

Imported rather than listed in ``pytest_plugins``: pytest refuses that variable in a
conftest that is not at the rootdir.
"""

import pytest
from vmtestbed.ganeti.pytest_plugin import (  # noqa: F401 - fixtures and a hook, by name
    ganeti_lab,
    ganeti_lab_lock,
    ganeti_machine_before,
    ganeti_timings,
    ganeti_version,
    order_by_version,
    pytest_terminal_summary,
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    """One lab per version, each brought down by test_zz_down.py: the lab tests run
    version by version, test_zz_down last in each (not only after the files that sort
    before it)."""
    order_by_version(items)

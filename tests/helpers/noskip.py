"""No silent skips where everything can run (a pytest plugin, registered in tests/conftest.py).

scripts/test (the README's and CI's command: root, KVM, fresh Debian 12) sets
HOOKPACK_TESTS_NO_SKIP=1: a test that skips there would be counted as passing without
having run, so any skip fails the session, naming the test and its reason.
"""

from __future__ import annotations

import os

ENV = "HOOKPACK_TESTS_NO_SKIP"
_SKIPPED: list[str] = []


def _armed() -> bool:
    return os.environ.get(ENV) == "1"


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        _SKIPPED.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED and _armed() and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED and _armed():
        terminalreporter.section(f"skipped tests fail this run ({ENV}=1)")
        for line in _SKIPPED:
            terminalreporter.write_line(line)

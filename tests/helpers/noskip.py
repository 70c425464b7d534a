"""No silent holes where everything can run (a pytest plugin, registered in tests/conftest.py).

scripts/test (the README's and CI's command: root, KVM, fresh Debian 12) sets
HOOKPACK_TESTS_NO_SKIP=1. A test that did not do its work there would be counted as
passing, so each of these fails the session, naming the test and the reason:

- a skip at run time (``pytest.skip``, ``skipif``) or at collection time
  (``pytest.importorskip``, ``pytest.skip(allow_module_level=True)`` in a module);
- an xfail or an XPASS (strict or not: an expected failure is not a pass);
- deselection the command line did not ask for (``-m``/``-k``/``--deselect`` coming from
  ``addopts`` or ``PYTEST_ADDOPTS``, or a plugin deselecting items), and, in a default run
  (no paths given), a test file under the test paths that was never collected
  (``collect_ignore``, ``--ignore`` in ``addopts``). A conftest may exempt files that run
  elsewhere with ``noskip_runs_elsewhere = {"glob": "where and by what"}`` (globs relative
  to the conftest's directory);
- less work than promised: a test that calls the ``record_dropped_work(reason)`` fixture
  (say, a rate tier the machine could not carry) did not do all it promises.

Without HOOKPACK_TESTS_NO_SKIP=1 the same findings are listed in the summary only.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ENV = "HOOKPACK_TESTS_NO_SKIP"
DROPPED = "hookpack_dropped_work"
EXEMPT = "noskip_runs_elsewhere"
# command-line options by which the caller chooses to run part of the collected tests
_SELECTING = ("-m", "-k", "--deselect", "--lf", "--last-failed", "--sw", "--stepwise")


def _armed() -> bool:
    return os.environ.get(ENV) == "1"


@pytest.fixture
def record_dropped_work(request):
    """Call with a reason when the test does less than it promises (a tier, a case, a
    direction it could not run here): under scripts/test that fails the run."""
    def record(reason: str) -> None:
        request.node.user_properties.append((DROPPED, reason))
        print(f"DROPPED WORK: {reason}")
    return record


def pytest_configure(config):
    config.pluginmanager.register(Guard(config), "hookpack-noskip-guard")


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        return str(longrepr[2])
    lines = str(longrepr or "").strip().splitlines()
    return lines[-1] if lines else ""


def asked_to_select(args) -> bool:
    """Whether the command line itself (not addopts) selects part of the tests."""
    return any(str(a) in _SELECTING or str(a).startswith(("-m", "-k", "--deselect="))
               for a in args)


class Guard:
    """What one session did not run as written."""

    def __init__(self, config) -> None:
        self.config = config
        self.found: dict[str, list[str]] = {}
        self.collected: set[Path] = set()

    def note(self, kind: str, line: str) -> None:
        self.found.setdefault(kind, []).append(line)

    # -- what ran, and how -------------------------------------------------------------
    def pytest_collectreport(self, report):
        if report.skipped:
            self.note("skipped at collection", f"{report.nodeid}: {_reason(report)}")

    def pytest_itemcollected(self, item):
        self.collected.add(Path(str(item.path)).resolve())

    def pytest_runtest_logreport(self, report):
        if hasattr(report, "wasxfail"):
            kind = "xpassed" if report.passed else "xfailed"
            self.note(kind, f"{report.nodeid}: {report.wasxfail or '(no reason given)'}")
        elif report.skipped:
            self.note("skipped", f"{report.nodeid}: {_reason(report)}")
        if report.when == "teardown":
            for key, reason in report.user_properties:
                if key == DROPPED:
                    self.note("did less than promised", f"{report.nodeid}: {reason}")

    def pytest_deselected(self, items):
        if asked_to_select(self.config.invocation_params.args):
            return
        for item in items:
            self.note("deselected (not asked for on the command line)", item.nodeid)

    def pytest_collection_finish(self, session):
        config = self.config
        if config.args_source == pytest.Config.ArgsSource.ARGS:
            return  # paths given: the caller chose a part of the suite
        exempt = self._exemptions()
        patterns = config.getini("python_files")
        for root in (Path(a).resolve() for a in config.args):
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*.py")):
                hidden = any(part.startswith(".") or part in ("__pycache__", "venv")
                             for part in path.relative_to(root).parts[:-1])
                if hidden or not any(fnmatch.fnmatch(path.name, p) for p in patterns):
                    continue
                if path in self.collected or _exempted(path, exempt):
                    continue
                self.note("test file never collected", str(path.relative_to(config.rootpath)))

    def _exemptions(self) -> list[tuple[Path, str]]:
        out = []
        for plugin in self.config.pluginmanager.get_plugins():
            table = getattr(plugin, EXEMPT, None)
            where = getattr(plugin, "__file__", None)
            if isinstance(table, dict) and where:
                base = Path(where).resolve().parent
                out += [(base, glob) for glob in table]
        return out

    # -- the verdict -------------------------------------------------------------------
    def pytest_sessionfinish(self, session, exitstatus):
        if self.found and _armed() and exitstatus == 0:
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter):
        if not self.found:
            return
        title = (f"not run as written: these fail this run ({ENV}=1)" if _armed()
                 else f"not run as written (these fail the run with {ENV}=1)")
        terminalreporter.section(title)
        for kind, lines in self.found.items():
            for line in lines:
                terminalreporter.write_line(f"{kind}: {line}")


def _exempted(path: Path, exempt: list[tuple[Path, str]]) -> bool:
    return any(path.is_relative_to(base) and fnmatch.fnmatch(str(path.relative_to(base)), glob)
               for base, glob in exempt)

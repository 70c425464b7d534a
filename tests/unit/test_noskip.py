"""The not-run-as-written guard (tests/helpers/noskip.py), each hole on a throwaway suite.

Each case runs a small suite (pytester, in process) with the guard loaded, armed as
scripts/test arms it (HOOKPACK_TESTS_NO_SKIP=1), and checks the run fails and names
the test; the control cases show the same suite passes when nothing was left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PASSING = """
def test_runs():
    pass
"""


@pytest.fixture
def armed(pytester, monkeypatch):
    """Run pytest on the throwaway suite with the guard, armed (or not: ``arm=False``)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)

    def run(*args: str, arm: bool = True):
        if arm:
            monkeypatch.setenv("HOOKPACK_TESTS_NO_SKIP", "1")
        else:
            monkeypatch.delenv("HOOKPACK_TESTS_NO_SKIP", raising=False)
        # no hypothesis plugin: its terminal summary imports hypothesis (seconds per run)
        return pytester.runpytest_inprocess("-p", "tests.helpers.noskip",
                                            "-p", "no:hypothesispytest", *args)
    return run


def fails_naming(result, *lines: str) -> None:
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["*not run as written: these fail this run*", *lines])


def test_a_run_time_skip_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

def test_skips():
    pytest.skip("no KVM here")
""")
    fails_naming(armed(), "skipped: *test_skips: Skipped: no KVM here")


def test_a_skipif_mark_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

@pytest.mark.skipif(True, reason="needs 2 CPUs")
def test_marked():
    pass
""")
    fails_naming(armed(), "skipped: *test_marked: *needs 2 CPUs")


def test_importorskip_at_collection_fails_the_run(pytester, armed):
    pytester.makepyfile(test_a=PASSING, test_b="""
import pytest

pytest.importorskip("no_such_module_anywhere")

def test_never_collected():
    pass
""")
    result = armed()
    fails_naming(result, "skipped at collection: test_b.py: *no_such_module_anywhere*")
    result.assert_outcomes(passed=1, skipped=1)


def test_module_level_skip_fails_the_run(pytester, armed):
    pytester.makepyfile(test_a=PASSING, test_b="""
import pytest

pytest.skip("not on this kernel", allow_module_level=True)

def test_never_collected():
    pass
""")
    fails_naming(armed(), "skipped at collection: test_b.py: *not on this kernel*")


def test_xfail_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

@pytest.mark.xfail(reason="known bug")
def test_broken():
    assert False
""")
    fails_naming(armed(), "xfailed: *test_broken: known bug")


def test_imperative_xfail_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

def test_gives_up():
    pytest.xfail("cannot check here")
""")
    fails_naming(armed(), "xfailed: *test_gives_up: cannot check here")


def test_xpass_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

@pytest.mark.xfail(reason="was broken once")
def test_fixed_meanwhile():
    pass
""")
    fails_naming(armed(), "xpassed: *test_fixed_meanwhile: was broken once")


def test_deselection_by_addopts_fails_the_run(pytester, armed):
    pytester.makeini("""
[pytest]
addopts = -m "not slow"
markers = slow: slow
""")
    pytester.makepyfile(PASSING + """
import pytest

@pytest.mark.slow
def test_slow_one():
    pass
""")
    fails_naming(armed(), "deselected (not asked for on the command line): *test_slow_one")


def test_deselection_by_pytest_addopts_env_fails_the_run(pytester, armed, monkeypatch):
    pytester.makepyfile(PASSING + """
def test_other():
    pass
""")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-k test_runs")
    fails_naming(armed(), "deselected (not asked for on the command line): *test_other")


def test_deselection_by_a_plugin_fails_the_run(pytester, armed):
    pytester.makeconftest("""
def pytest_collection_modifyitems(config, items):
    dropped = [i for i in items if "heavy" in i.name]
    items[:] = [i for i in items if i not in dropped]
    config.hook.pytest_deselected(items=dropped)
""")
    pytester.makepyfile(PASSING + """
def test_heavy():
    pass
""")
    fails_naming(armed(), "deselected (not asked for on the command line): *test_heavy")


def test_selection_asked_for_on_the_command_line_passes(pytester, armed):
    """`scripts/test -m "not qemu"` (the README's fast subset) is the caller's choice."""
    pytester.makeini("[pytest]\nmarkers = slow: slow\n")
    pytester.makepyfile(PASSING + """
import pytest

@pytest.mark.slow
def test_slow_one():
    pass
""")
    result = armed("-m", "not slow")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1, deselected=1)


def test_a_test_file_ignored_by_conftest_fails_the_default_run(pytester, armed):
    pytester.makeconftest('collect_ignore = ["test_b.py"]\n')
    pytester.makepyfile(test_a=PASSING, test_b=PASSING)
    fails_naming(armed(), "test file never collected: test_b.py")


def test_a_test_file_ignored_by_addopts_fails_the_default_run(pytester, armed):
    pytester.makeini("[pytest]\naddopts = --ignore=test_b.py\n")
    pytester.makepyfile(test_a=PASSING, test_b=PASSING)
    fails_naming(armed(), "test file never collected: test_b.py")


def test_files_a_conftest_says_run_elsewhere_are_exempt(pytester, armed):
    pytester.makeconftest('collect_ignore = ["test_b.py"]\n'
                          'noskip_runs_elsewhere = {"test_b.py": "inside the guest"}\n')
    pytester.makepyfile(test_a=PASSING, test_b=PASSING)
    result = armed()
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)


def test_dropped_work_fails_the_run(pytester, armed):
    pytester.makepyfile(PASSING + """
def test_tiers(record_dropped_work):
    for rate in (10, 100, 500):
        if rate > 100:
            record_dropped_work(f"{rate} Mbit/s: the guest cannot carry it")
""")
    result = armed()
    fails_naming(result, "did less than promised: *test_tiers: 500 Mbit/s: the guest cannot*")
    result.assert_outcomes(passed=2)


def test_findings_are_only_reported_when_not_armed(pytester, armed):
    pytester.makepyfile(PASSING + """
import pytest

def test_skips():
    pytest.skip("no KVM here")

def test_tiers(record_dropped_work):
    record_dropped_work("one tier")
""")
    result = armed(arm=False)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*not run as written (these fail the run with*",
                                 "skipped: *test_skips: Skipped: no KVM here",
                                 "did less than promised: *test_tiers: one tier"])


def test_a_complete_run_passes_when_armed(pytester, armed):
    pytester.makepyfile(test_a=PASSING, test_b=PASSING)
    result = armed()
    assert result.ret == 0, result.stdout.str()
    assert "not run as written" not in result.stdout.str()

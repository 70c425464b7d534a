"""The no-silent-skip guard (tests/helpers/noskip.py), run on a throwaway suite."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SUITE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("no KVM here")
"""


def test_a_skip_fails_the_run_when_armed(pytester, monkeypatch):
    monkeypatch.setenv("HOOKPACK_TESTS_NO_SKIP", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-p", "tests.helpers.noskip")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*skipped tests fail this run*",
                                 "*test_skips: Skipped: no KVM here"])


def test_a_skip_is_only_reported_when_not_armed(pytester, monkeypatch):
    monkeypatch.delenv("HOOKPACK_TESTS_NO_SKIP", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(SUITE)
    result = pytester.runpytest_subprocess("-p", "tests.helpers.noskip")
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=1)

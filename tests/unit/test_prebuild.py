"""vm-testbed prebuild (run in the background by scripts/test) and the suite order it
relies on (tests/conftest.py)."""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
import time
from pathlib import Path

import pytest
from vmtestbed import paths, prebuild

from tests.conftest import suite_rank, wait_for_process


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache of the test's own: the running lock of a real prebuild (scripts/test runs
    one beside the suite) is not this test's."""
    monkeypatch.setenv("VMTESTBED_CACHE", str(tmp_path / "cache"))


def test_a_failed_step_is_reported_and_the_next_still_built():
    built, lines = [], []

    def broken() -> None:
        raise OSError("mirror unreachable")

    rc = prebuild.run((("first", broken), ("second", lambda: built.append("second"))),
                      say=lines.append)
    assert rc == 1
    assert built == ["second"]
    assert lines[0].startswith("prebuild: first: FAILED after ")
    assert "OSError: mirror unreachable" in lines[0]
    assert any(line.startswith("prebuild: second: ") for line in lines)
    assert lines[-1].endswith("1 failed")


def test_all_steps_built_exit_zero():
    lines: list[str] = []
    assert prebuild.run((("only", lambda: None),), say=lines.append) == 0
    assert lines[-1].endswith("0 failed")


def test_the_suite_order_around_the_prebuild():
    assert suite_rank("tests/unit/test_env.py::test_x") == 0
    # beside the prebuild and the systemd guest's module: no rate measured
    assert suite_rank("tests/reliability/test_crash.py::t") == 1
    assert suite_rank("tests/actions/test_netbox_fake.py::t") == 1
    assert suite_rank("tests/actions/test_disk_grow_qemu.py::t") == 1
    # after them: a rate measurement
    assert suite_rank("tests/shaping/test_shaping_netns.py::test_y") == 2
    assert suite_rank("tests/testbed/test_guest.py::t") == 2
    for late in ("tests/actions/test_netbox.py::t", "tests/testbed/test_netbox_server.py::t",
                 "tests/debpkg/test_deb.py::t", "tests/systemd_guest/test_units.py::t",
                 "tests/ganeti/test_ganeti_lab.py::t[3.1]"):
        assert suite_rank(late) == 3, late


def test_wait_for_process_returns_when_the_process_ends():
    child = subprocess.Popen(["sleep", "0.7"])
    reaper = threading.Thread(target=child.wait)  # as scripts/test's shell reaps it
    reaper.start()
    ended, waited = wait_for_process(child.pid, timeout=30)
    reaper.join()
    assert ended and 0.3 < waited < 30


def test_wait_for_process_gives_up_after_its_timeout():
    child = subprocess.Popen(["sleep", "30"])
    try:
        ended, waited = wait_for_process(child.pid, timeout=0.5)
        assert not ended and waited >= 0.5
    finally:
        child.kill()
        child.wait()


def test_a_zombie_counts_as_ended():
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert wait_for_process(child.pid, timeout=5) == (True, pytest.approx(0, abs=1))
    child.wait()


def _hold(out: str, log: str, seconds: float) -> None:
    with paths.build_lock(Path(out)):
        with open(log, "a") as f:
            f.write(f"in {time.monotonic()}\n")
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"out {time.monotonic()}\n")


def test_build_lock_lets_one_builder_in_at_a_time(tmp_path):
    out, log = tmp_path / "cache" / "entry", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(str(out), str(log), 0.3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events == ["in", "out"] * 3  # never two inside at once


def _run_prebuild(cache: str, seconds: float) -> None:
    import os

    os.environ["VMTESTBED_CACHE"] = cache
    prebuild.run((("slow", lambda: time.sleep(seconds)),), say=lambda line: None)


def test_measuring_tests_wait_while_a_prebuild_runs_and_no_longer():
    assert prebuild.wait_until_done(5) == (True, 0.0)  # no prebuild ever ran here
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_run_prebuild, args=(str(paths.cache_dir()), 3))
    child.start()
    deadline = time.monotonic() + 10
    while prebuild.wait_until_done(0)[0] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child holds the lock
    assert prebuild.wait_until_done(0.1)[0] is False  # bounded: gave up, still running
    assert prebuild.wait_until_done(60)[0] is True  # until the build ended
    child.join(10)
    assert child.exitcode == 0
    assert prebuild.wait_until_done(0)[0] is True  # ended: nothing to wait for

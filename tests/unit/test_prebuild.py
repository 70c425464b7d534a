"""vm-testbed prebuild (run in the background by scripts/test) and the suite order it
relies on (tests/conftest.py)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from vmtestbed import paths, prebuild

from tests.conftest import suite_rank


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


def test_the_suite_runs_the_fast_tests_first_and_the_prebuilt_trees_last():
    assert suite_rank("tests/unit/test_env.py::test_x") == 0
    assert suite_rank("tests/shaping/test_shaping_netns.py::test_y") == 1
    for late in ("tests/actions/test_netbox.py::t", "tests/testbed/test_netbox_server.py::t",
                 "tests/debpkg/test_deb.py::t", "tests/systemd_guest/test_units.py::t",
                 "tests/ganeti/test_ganeti_lab.py::t[3.1]"):
        assert suite_rank(late) == 2, late
    assert suite_rank("tests/actions/test_netbox_fake.py::t") == 1


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

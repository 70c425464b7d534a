"""pytest fixtures for the Ganeti lab: one two-node lab per session, always brought down.

Use from a conftest by importing the fixtures by name
(pytest refuses ``pytest_plugins`` in a conftest below the rootdir).

- ``ganeti_lab_lock``: the machine-wide lab lock, held for the session (the lab is one
  per machine; other sessions wait up to ``VMTESTBED_GANETI_LOCK_WAIT`` s, default 1800).
- ``ganeti_version``: the Ganeti version of the lab, one session-wide parameter per
  version in ``VMTESTBED_GANETI_VERSIONS`` (default ``3.0,3.1``): every lab test runs
  once per version, the 3.0 lab's tests first, then the 3.1 lab's
  (:func:`order_by_version`).
- ``ganeti_lab``: the :class:`~vmtestbed.ganeti.Lab` of that version, up with hookpack
  installed. A lab left over by a crashed run is brought down first. Teardown runs
  ``down`` on success, failure, Ctrl-C and SIGTERM (turned into KeyboardInterrupt while
  the lab is up).
  ``VMTESTBED_GANETI_NODES`` (default 2) and ``VMTESTBED_GANETI_HOOKPACK=0`` change it.
- ``ganeti_machine_before``: :func:`vmtestbed.ganeti.machine.snapshot` taken before up.
- ``ganeti_timings``: a dict tests add their operation timings to; printed at the end
  of the run and written to ``vm-testbed/.cache/ganeti-timings.json``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from vmtestbed.ganeti import machine
from vmtestbed.ganeti.lab import Lab
from vmtestbed.ganeti.layout import VERSIONS as LAB_VERSIONS
from vmtestbed.ganeti.lock import LabLock

NODES = int(os.environ.get("VMTESTBED_GANETI_NODES", "2"))
LOCK_WAIT = float(os.environ.get("VMTESTBED_GANETI_LOCK_WAIT", "1800"))
WITH_HOOKPACK = os.environ.get("VMTESTBED_GANETI_HOOKPACK", "1") != "0"
VERSIONS = tuple(v.strip() for v in
                 os.environ.get("VMTESTBED_GANETI_VERSIONS", ",".join(LAB_VERSIONS)).split(",")
                 if v.strip())
TIMINGS_FILE = Path(__file__).resolve().parents[2] / ".cache" / "ganeti-timings.json"
_TIMINGS: dict[str, float] = {}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def ganeti_lab_lock() -> Iterator[None]:
    """Hold the machine's lab lock for the session: other sessions (other worktrees'
    test runs, the demo) wait their turn. A child session started by a test of a session
    that holds it (``VMTESTBED_GANETI_LOCK_HELD_BY`` = its parent's pid) goes ahead."""
    if os.environ.get("VMTESTBED_GANETI_LOCK_HELD_BY") == str(os.getppid()):
        yield
        return
    with LabLock(wait=LOCK_WAIT, who=f"pytest in {Path.cwd()}"):
        yield


@pytest.fixture(scope="session")
def ganeti_machine_before(ganeti_lab_lock: None) -> dict[str, list[str]]:
    if os.geteuid() != 0:
        pytest.skip("the Ganeti lab needs root")
    Lab().clear_leftover(wait=LOCK_WAIT)  # left by a killed session, or wait for it
    return machine.snapshot()


@pytest.fixture(scope="session")
def ganeti_timings() -> dict[str, float]:
    return _TIMINGS


@pytest.fixture(scope="session", params=VERSIONS)
def ganeti_version(request: pytest.FixtureRequest) -> str:
    version: str = request.param
    return version


@pytest.fixture(scope="session")
def ganeti_lab(ganeti_machine_before: dict[str, list[str]], ganeti_version: str,
               ganeti_timings: dict[str, float]) -> Iterator[Lab]:
    previous = signal.signal(signal.SIGTERM, _sigterm)
    lab = Lab()
    try:
        lab.up(nodes=NODES, owner="pytest", version=ganeti_version)
        if WITH_HOOKPACK:
            lab.install_hookpack()
        ganeti_timings.update({f"lab{ganeti_version}.{k}": v for k, v in lab.timings.items()})
        yield lab
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut down short
        t0 = time.monotonic()
        try:
            report = lab.down()
        finally:
            signal.signal(signal.SIGTERM, previous)
        ganeti_timings[f"lab{ganeti_version}.down"] = round(time.monotonic() - t0, 1)
        if report.problems:
            print("ganeti lab down: " + "; ".join(report.problems))


def order_by_version(items: list[pytest.Item]) -> None:
    """Put the lab tests in place in version order (each lab comes up once), and within
    a version the ``test_zz_down`` module last (it brings that lab down); the other tests
    keep their places."""
    def version_of(item: pytest.Item) -> str | None:
        callspec = getattr(item, "callspec", None)
        return callspec.params.get("ganeti_version") if callspec else None

    slots = [i for i, item in enumerate(items) if version_of(item) is not None]
    lab_items = [items[i] for i in slots]
    lab_items.sort(key=lambda item: (VERSIONS.index(str(version_of(item))),
                                     item.module.__name__.endswith("test_zz_down")
                                     if getattr(item, "module", None) else False))
    for i, item in zip(slots, lab_items, strict=True):
        items[i] = item


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TIMINGS:
        return
    terminalreporter.section("ganeti lab timings (s)")
    for key, value in sorted(_TIMINGS.items()):
        terminalreporter.write_line(f"{key:40} {value:8.1f}")
    TIMINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS_FILE.write_text(json.dumps(_TIMINGS, indent=2, sort_keys=True) + "\n")

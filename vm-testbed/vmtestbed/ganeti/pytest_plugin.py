"""pytest fixtures for the Ganeti lab: one two-node lab per session, always brought down.

Use from a conftest with ``from vmtestbed.ganeti.pytest_plugin import *``
(pytest refuses ``pytest_plugins`` in a conftest below the rootdir).

- ``ganeti_lab``: the :class:`~vmtestbed.ganeti.Lab`, up with hookpack installed. A lab
  left over by a crashed run is brought down first. Teardown runs ``down`` on success,
  failure, Ctrl-C and SIGTERM (turned into KeyboardInterrupt while the lab is up).
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
from vmtestbed.ganeti.lab import STATE_FILE, Lab

NODES = int(os.environ.get("VMTESTBED_GANETI_NODES", "2"))
TIMINGS_FILE = Path(__file__).resolve().parents[2] / ".cache" / "ganeti-timings.json"
_TIMINGS: dict[str, float] = {}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def ganeti_machine_before() -> dict[str, list[str]]:
    if STATE_FILE.exists():
        Lab().down()  # a lab left over by a crashed or killed run
    return machine.snapshot()


@pytest.fixture(scope="session")
def ganeti_timings() -> dict[str, float]:
    return _TIMINGS


@pytest.fixture(scope="session")
def ganeti_lab(ganeti_machine_before: dict[str, list[str]],
               ganeti_timings: dict[str, float]) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the Ganeti lab needs root")
    previous = signal.signal(signal.SIGTERM, _sigterm)
    lab = Lab()
    try:
        lab.up(nodes=NODES)
        lab.install_hookpack()
        ganeti_timings.update({f"lab.{k}": v for k, v in lab.timings.items()})
        yield lab
    finally:
        t0 = time.monotonic()
        report = lab.down()
        ganeti_timings["lab.down"] = round(time.monotonic() - t0, 1)
        signal.signal(signal.SIGTERM, previous)
        if report.problems:
            print("ganeti lab down: " + "; ".join(report.problems))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TIMINGS:
        return
    terminalreporter.section("ganeti lab timings (s)")
    for key, value in sorted(_TIMINGS.items()):
        terminalreporter.write_line(f"{key:40} {value:8.1f}")
    TIMINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS_FILE.write_text(json.dumps(_TIMINGS, indent=2, sort_keys=True) + "\n")

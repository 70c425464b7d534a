"""Shared fixtures: the recorded Ganeti environments and a throwaway hookpack config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from vmtestbed import prebuild

from hookpack.env import read_env_dump

# vm-testbed fixtures (guest_image, netnode, kvmnode, boot_guest) for every test dir.
# tests.helpers.secretscan: fails any test whose output shows one of the suite's secrets;
# tests.helpers.noskip: under scripts/test a skipped test fails the run;
# pytester: tests/reliability/test_security.py proves the scanner with it.
pytest_plugins = [
    "vmtestbed.pytest_plugin", "tests.helpers.secretscan", "tests.helpers.noskip", "pytester",
]

# Environment dumps recorded on a real Ganeti 3.0.2 cluster (copied from
# shared/reference/ganeti-env-samples): the golden fixtures of the env parser and roles.
SAMPLES = Path(__file__).resolve().parent / "fixtures" / "ganeti-env-samples"
# The same dumps from the Ganeti 3.1 lab (`vm-testbed ganeti record-env`).
SAMPLES_3_1 = SAMPLES.with_name("ganeti-3.1-env-samples")
_RECORDED_ON = re.compile(r"recorded on (\S+)")


# The suite's order, around what scripts/test runs in the background: the prebuild
# (vm-testbed/vmtestbed/prebuild.py) and a pytest of its own (BESIDE_PATHS_ENV: the
# systemd guest's module). First the unit tests, then the
# other tests that measure no rate (QEMU guests among them), both beside those two; then
# the tests that measure a rate or latency, which wait (bounded) until both have ended: a
# build or a guest beside them skews what they measure (seen in CI-like runs); last the
# tests that need the cached trees the prebuild builds (NetBox, the Debian 12 trees, the
# Debian 13 tree of the 3.1 lab), which wait too. Nothing is left out; the order within
# a rank is kept.
FIRST = ("tests/unit/",)
MEASURING = ("tests/shaping/", "tests/shaping_accuracy/", "tests/shaping_guest/",
             "tests/testbed/test_guest.py", "tests/testbed/test_network.py")
LAST = ("tests/testbed/test_netbox_server.py", "tests/actions/test_netbox.py",
        "tests/debpkg/", "tests/systemd_guest/", "tests/ganeti/")
PREBUILD_WAIT_S = 1200
BESIDE_WAIT_S = 1800
BESIDE_PID_ENV = "HOOKPACK_TESTS_BESIDE_PID"  # scripts/test: the pytest beside this one
BESIDE_PATHS_ENV = "HOOKPACK_TESTS_BESIDE_PATHS"  # and what it runs (left out here)
BESIDE_ENV = "HOOKPACK_TESTS_BESIDE"  # set in that pytest: it waits for nothing
# tests.helpers.noskip: what that pytest runs is not missing from this one (scripts/test
# fails the run on its exit status too)
noskip_runs_elsewhere = {
    (f"{path.removeprefix('tests/')}/test_*.py" if not path.endswith(".py")
     else path.removeprefix("tests/")): "scripts/test's pytest beside this one"
    for path in os.environ.get(BESIDE_PATHS_ENV, "").split()}


if os.environ.get(BESIDE_ENV):
    # A background job of scripts/test's shell starts with SIGINT ignored, and so would
    # every process its tests start: restore what a foreground run has.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def suite_rank(nodeid: str) -> int:
    if nodeid.startswith(FIRST):
        return 0
    if nodeid.startswith(LAST):
        return 3
    return 2 if nodeid.startswith(MEASURING) else 1


def _rank(item: pytest.Item) -> int:
    return suite_rank(item.nodeid)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the collected order within a rank


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the item's fixtures (a module's guest run among them) are set up."""
    if _rank(item) < 2 or os.environ.get(BESIDE_ENV):
        return
    ended, waited = prebuild.wait_until_done(PREBUILD_WAIT_S)
    _note_wait("the background prebuild", ended, waited, item)
    beside = os.environ.get(BESIDE_PID_ENV, "")
    if beside.isdigit():
        ended, waited = wait_for_process(int(beside), BESIDE_WAIT_S)
        _note_wait(f"the tests beside (pid {beside})", ended, waited, item)


def wait_for_process(pid: int, timeout: float) -> tuple[bool, float]:
    """Wait (at most ``timeout`` s) while ``pid`` runs (a child of scripts/test's shell,
    reaped by it: its /proc entry goes when it ends). Returns whether it ended, and the
    seconds waited."""
    started = time.monotonic()
    while _state(pid) not in ("Z", "X"):
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started
        time.sleep(0.5)
    return True, time.monotonic() - started


def _state(pid: int) -> str:
    """The process's state letter (``X``: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _note_wait(what: str, ended: bool, waited: float, item: pytest.Item) -> None:
    if waited >= 1:
        WAITS.append(f"waited {waited:.0f} s for {what} "
                     f"{'to end' if ended else '(still running)'} before {item.nodeid}")


WAITS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in WAITS:
        terminalreporter.write_line(line)


def sample_files(directory: Path = SAMPLES) -> list[Path]:
    """The env dumps recorded on a real Ganeti 3.0.2 cluster (shared/reference), or
    those in ``directory``."""
    return sorted(directory.glob("*.env"))


def load_sample(path: Path) -> tuple[dict[str, str], str]:
    """A dump's environment and the node it was recorded on (from its header)."""
    text = path.read_text()
    match = _RECORDED_ON.search(text.splitlines()[0])
    assert match, f"{path} has no 'recorded on <node>' header"
    return read_env_dump(text), match.group(1)


@pytest.fixture
def sample():
    def get(name: str) -> tuple[dict[str, str], str]:
        return load_sample(SAMPLES / f"{name}.env")
    return get


@pytest.fixture
def install_hooks(tmp_path):
    """Lay hookpack's entries into tmp_path/hooks as an operator would (`hookpack hooks
    install`), passing them ``config``; returns the hooks root."""
    def install(config: Path) -> Path:
        root = tmp_path / "hooks"
        subprocess.run([sys.executable, "-m", "hookpack", "hooks", "install", "--root",
                        str(root), "--entry-config", str(config)], check=True,
                       capture_output=True)
        return root
    return install


@pytest.fixture
def hooks(write_config, install_hooks):
    """A hooks tree whose entries use a config with the given extra TOML."""
    def make(extra_config: str = "") -> Path:
        return install_hooks(write_config(extra_config))
    return make


@pytest.fixture
def write_config(tmp_path):
    """Write a hookpack.toml whose paths all point into tmp_path; returns its path."""
    def write(extra: str = "", mode: int = 0o600) -> Path:
        path = tmp_path / "hookpack.toml"
        paths = "\n".join(f'{key} = "{tmp_path / key}"' for key in (
            "hooks_dir", "kvm_dir", "instance_disks_dir", "ganeti_data_dir", "state_dir",
            "spool_dir", "run_dir"))
        path.write_text(f"[log]\nsyslog = false\n\n[paths]\n{paths}\n\n{extra}\n")
        path.chmod(mode)
        return path
    return write


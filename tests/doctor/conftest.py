"""A network namespace per test and `hookpack doctor` run inside it (real kernel state).

Taps, bridges, the uplink, qdiscs and nf_tables netdev chains are per network namespace,
so each test sets its own state without touching the host's or another engineer's.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_SEQ = itertools.count()


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=True)


class DoctorNs:
    """A netns with a dummy uplink `up0`, and a config whose paths live in ``base``."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base
        self.config = base / "hookpack.toml"

    def ip(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.name, *argv)

    def write_config(self, shaping: str = 'uplink = "up0"\n') -> None:
        paths = "\n".join(f'{key} = "{self.base / key}"' for key in (
            "hooks_dir", "kvm_dir", "state_dir", "spool_dir", "run_dir", "ganeti_data_dir"))
        self.config.write_text(f"[log]\nsyslog = false\n[paths]\n{paths}\n"
                               f"[shaping]\nenabled = true\n{shaping}")
        self.config.chmod(0o600)

    def doctor(self) -> dict[str, dict[str, str]]:
        """The shaping checks by name, from `hookpack doctor --json` run in the netns."""
        proc = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-m",
                               "hookpack", "doctor", "--json", "--config", str(self.config)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert "Traceback" not in proc.stderr, proc.stderr
        checks = json.loads(proc.stdout)
        return {c["name"]: c for c in checks if c["name"].startswith("shaping")}


@pytest.fixture
def doctor_ns(tmp_path) -> Iterator[DoctorNs]:
    if os.geteuid() != 0:
        pytest.fail("netns tests need root")
    name = f"hpdoc{os.getpid()}x{next(_SEQ)}"
    run("ip", "netns", "add", name)
    try:
        ns = DoctorNs(name, tmp_path)
        ns.ip("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
        ns.ip("ip", "link", "set", "up0", "up")
        ns.write_config()
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)

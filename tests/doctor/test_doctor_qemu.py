"""The doctor's QMP check against real QEMU processes laid out like Ganeti's KVM dir.

QEMU runs with no guest (``-S``, no disk, ``-accel kvm``): QMP is all the check talks
to. The states are real: a QEMU whose socket answers, one whose socket was replaced by
a stale socket file nobody listens on, one whose socket is held by another QMP client,
and a pid file of a QEMU that is gone (not a running instance at all).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.qemu


class Qemus:
    def __init__(self, kvm_dir: Path) -> None:
        self.kvm_dir = kvm_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        for sub in ("pid", "ctrl"):
            (kvm_dir / sub).mkdir(parents=True, exist_ok=True)

    def socket(self, name: str) -> Path:
        return self.kvm_dir / "ctrl" / f"{name}.qmp"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        sock = self.socket(name)
        proc = subprocess.Popen(
            ["qemu-system-x86_64", "-name", name, "-accel", "kvm", "-S", "-nodefaults",
             "-display", "none", "-m", "64", "-qmp", f"unix:{sock},server=on,wait=off"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        (self.kvm_dir / "pid" / name).write_text(f"{proc.pid}\n")
        self._wait_listening(proc, sock)
        return proc

    @staticmethod
    def _wait_listening(proc: subprocess.Popen[bytes], sock: Path) -> None:
        """Until QEMU accepts on the socket (bounded by connect attempts, not by time)."""
        for _ in range(2000):
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited: {proc.stderr.read().decode()[-300:]}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(1)
                probe.connect(str(sock))
                probe.recv(4096)  # the greeting: QEMU serves us, then we leave
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.01)
        raise RuntimeError(f"QEMU never listened on {sock}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def qemus(tmp_path) -> Iterator[Qemus]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.fail("needs /dev/kvm")
    q = Qemus(tmp_path / "kvm_dir")
    try:
        yield q
    finally:
        q.close()


def _qmp_checks(tmp_path, write_config) -> list[dict[str, str]]:
    config = write_config()
    proc = subprocess.run([sys.executable, "-m", "hookpack", "doctor", "--json", "--config",
                           str(config)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return [c for c in json.loads(proc.stdout) if c["name"] == "qmp"]


_SEQ = itertools.count()


def _name(tmp_path: Path, base: str) -> str:
    """Unique per process and test: other engineers run QEMU tests on this machine."""
    return f"{base}{os.getpid()}x{next(_SEQ)}.example.test"


def test_running_instance_answers_and_a_stale_socket_fails(qemus, tmp_path, write_config):
    good, stale = _name(tmp_path, "good"), _name(tmp_path, "stale")
    qemus.start(good)
    stale_proc = qemus.start(stale)
    checks = _qmp_checks(tmp_path, write_config)
    assert [c["status"] for c in checks] == ["pass", "pass"]
    assert checks[0]["message"] == f"{good}: QMP answers (status prelaunch)"
    # the socket path now names a socket file nobody listens on (QEMU still runs)
    path = qemus.socket(stale)
    path.unlink()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    checks = {c["message"].split(":")[0]: c for c in _qmp_checks(tmp_path, write_config)}
    assert checks[good]["status"] == "pass"
    bad = checks[stale]
    assert bad["status"] == "fail"
    assert bad["message"].startswith(f"{stale}: QEMU pid {stale_proc.pid} runs but QMP does "
                                     f"not answer ({path}: ")
    assert bad["message"].endswith("pinning and disk-grow cannot reach it")
    assert bad["fix"] == f"restore the socket: `gnt-instance reboot {stale}` (or stop and start it)"


def test_socket_held_by_another_client_warns(qemus, tmp_path, write_config):
    name = _name(tmp_path, "busy")
    qemus.start(name)
    with socket.socket(socket.AF_UNIX) as holder:
        holder.connect(str(qemus.socket(name)))
        holder.recv(4096)
        holder.sendall(b'{"execute": "qmp_capabilities"}\n')
        holder.recv(4096)
        [check] = _qmp_checks(tmp_path, write_config)
    assert check["status"] == "warn"
    assert check["message"] == f"{name}: {qemus.socket(name)} is held by another QMP client"


def test_pid_file_of_a_dead_qemu_is_no_running_instance(qemus, tmp_path, write_config):
    name = _name(tmp_path, "gone")
    proc = qemus.start(name)
    proc.kill()
    proc.wait(timeout=30)
    [check] = _qmp_checks(tmp_path, write_config)
    assert check["status"] == "pass" and check["message"].startswith("no running instance")

"""The QMP adapter against a real QEMU process (no guest OS needed: it stays paused)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hookpack.adapters.qmp import QmpBusy, QmpError, QmpUnavailable, session

pytestmark = pytest.mark.qemu
DISK_ID = "disk-1234abcd-1234-5678"


@pytest.fixture
def qemu(tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(b"")
    os.truncate(disk, 64 << 20)
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-machine", "accel=kvm:tcg", "-S", "-nodefaults", "-display", "none",
        "-drive", f"file={disk},format=raw,if=none,id={DISK_ID}",
        "-device", f"virtio-blk-pci,drive={DISK_ID}",
        "-qmp", f"unix:{sock},server=on,wait=off"], stderr=subprocess.DEVNULL)
    _wait_listening(sock, proc)
    yield proc, sock
    proc.kill()
    proc.wait()


def _wait_listening(sock: Path, proc: subprocess.Popen) -> None:
    for _ in range(200):
        assert proc.poll() is None, "QEMU exited at start"
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(sock))
            probe.recv(10)  # take the greeting, then leave: QEMU serves the next client
            return
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError(f"QEMU never listened on {sock}")


def test_execute_and_errors(qemu):
    _, sock = qemu
    with session(sock, 5) as qmp:
        devices = {b["device"]: b for b in qmp.execute("query-block")}
        assert devices[DISK_ID]["inserted"]["image"]["virtual-size"] == 64 << 20
        with pytest.raises(QmpError) as err:
            qmp.execute("block_resize", {"device": "nope", "size": 1})
        assert err.value.error_class == "GenericError"


def test_busy_socket_is_retried_until_the_deadline_then_reported(qemu):
    _, sock = qemu
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(sock))
    holder.recv(100)
    start = time.monotonic()
    with pytest.raises(QmpBusy, match="stayed busy"), session(sock, 1.5):
        pass
    assert 1.4 < time.monotonic() - start < 2.5
    holder.close()
    with session(sock, 3) as qmp:  # free again: works
        assert qmp.execute("query-status")["status"] == "prelaunch"


def test_busy_then_free_within_the_deadline_succeeds(qemu):
    _, sock = qemu
    holder = socket.socket(socket.AF_UNIX)
    holder.connect(str(sock))
    holder.recv(100)
    signal.setitimer(signal.ITIMER_REAL, 0.7)
    signal.signal(signal.SIGALRM, lambda *_: holder.close())
    try:
        with session(sock, 5) as qmp:
            assert qmp.execute("query-status")["status"] == "prelaunch"
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_missing_socket_and_dead_qemu_are_unavailable(qemu, tmp_path):
    proc, sock = qemu
    with pytest.raises(QmpUnavailable, match="no QMP socket"), session(tmp_path / "x.qmp", 2):
        pass
    proc.kill()
    proc.wait()
    assert Path(sock).exists()  # QEMU killed -9 leaves its socket file behind
    start = time.monotonic()
    with pytest.raises(QmpUnavailable, match="does not accept"), session(sock, 5):
        pass
    assert time.monotonic() - start < 1.0


def test_events_between_replies_are_skipped(qemu):
    _, sock = qemu
    with session(sock, 5) as qmp:
        assert qmp.execute("cont") == {}  # QEMU also emits a RESUME event around this
        assert qmp.execute("stop") == {}  # ... and a STOP event
        assert qmp.execute("query-status")["status"] == "paused"

"""Thin adapters for the host: running tools, network namespaces, our processes.

Every process the testbed starts carries ``VMTESTBED_OWNER=<owner>`` in its
environment; the leak check and ``vm-testbed down`` find them by that mark and
by the pids they recorded, never by name patterns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from vmtestbed.errors import CommandFailed, TestbedError

OWNER_ENV = "VMTESTBED_OWNER"
NAME_PREFIX = "hpt-"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def owner_tag() -> str:
    """The mark of this process's objects: its pid (unique while it runs)."""
    return str(os.getpid())


def unique_name(kind: str = "") -> str:
    """``hpt-<pid>-<random>[-kind]``: unique across parallel test runs and helpers."""
    name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    return f"{name}-{kind}" if kind else name


def run(argv: Sequence[str], check: bool = True, timeout: float = 60.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a host command (argument list, never a shell); raise CommandFailed on error."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          input=input_text, check=False)
    if check and proc.returncode != 0:
        raise CommandFailed(list(argv), proc.returncode, proc.stderr)
    return proc


def owned_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process, marked as ours."""
    env = dict(os.environ)
    env[OWNER_ENV] = owner_tag()
    if extra:
        env.update(extra)
    return env


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec`` execs the command in place: the pid we get is the command's."""
    return ["ip", "netns", "exec", netns, *argv]


_libc = ctypes.CDLL(None, use_errno=True)


def call_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a short-lived thread that has entered network namespace ``netns``.

    setns(CLONE_NEWNET) changes only the calling thread, so the rest of the
    process (and other tests' threads) stay where they are. File descriptors
    opened by ``fn`` (a tap, a socket) stay valid process-wide and keep the
    namespace they were created in.
    """
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=target, name=f"netns-{netns}")
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie of ours counts as dead
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def process_owner(pid: int) -> str | None:
    """The ``VMTESTBED_OWNER`` mark of a process, or None (not ours, or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    prefix = f"{OWNER_ENV}=".encode()
    for entry in environ.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode()
    return None


def owned_pids() -> dict[int, str]:
    """All live processes the testbed started (any owner): pid -> owner mark."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            owner = process_owner(int(entry.name))
            if owner is not None and pid_alive(int(entry.name)):
                found[int(entry.name)] = owner
    return found


def kill_owned(pid: int, timeout: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started: ``sig``, then SIGKILL after ``timeout``.

    Refuses a pid that does not carry our mark (the pid may have been reused).
    """
    if not pid_alive(pid):
        _reap(pid)
        return
    if process_owner(pid) is None:
        raise TestbedError(f"pid {pid} is not a testbed process; not killing it")
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)
    _reap(pid)


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        _reap(pid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

"""A hook killed while its iptables-restore child still commits: the node lock stays
held until that child exits too, so the next run cannot read the rules halfway.

The child here is `sleep` (what matters is the inherited lock, not what the child
does); the process holding the lock is killed with SIGKILL like in the crash tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hookpack.errors import LockTimeout
from hookpack.locks import held_lock_fds, node_lock

HOLDER = """
import os, sys, pathlib
from hookpack.locks import node_lock
from hookpack.shaping.netfilter import _Procs
with node_lock(pathlib.Path(sys.argv[1]), "shaping", 1):
    procs = _Procs({0: ["sleep", sys.argv[2]]}, {})
    print(procs.procs[0].pid, flush=True)
    os.kill(os.getpid(), 9)
"""


def test_child_of_a_killed_hook_keeps_the_lock_until_it_exits(tmp_path):
    holder = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "3"],
                            capture_output=True, text=True, timeout=30)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    child = int(holder.stdout.split()[0])
    try:
        with pytest.raises(LockTimeout), node_lock(tmp_path, "shaping", 0):
            pass
        give_up = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}") and time.monotonic() < give_up:
            time.sleep(0.05)
        with node_lock(tmp_path, "shaping", 5):
            pass  # the child gone, the lock is free
    finally:
        if os.path.exists(f"/proc/{child}"):
            os.kill(child, signal.SIGKILL)


def test_held_lock_fds_follow_the_lock(tmp_path):
    assert held_lock_fds() == ()
    with node_lock(tmp_path, "a", 1):
        (fd,) = held_lock_fds()
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tmp_path / "a.lock")
    assert held_lock_fds() == ()

"""A hook killed while its ``iptables-restore`` child still commits: the node lock stays
held until that child exits too, so the next run cannot read the rules halfway.

Shaping's one remaining child process is the once-per-boot removal of the earlier
classifier's iptables rules (hookpack/actions/shaping/legacy.py, started from
``hookpack.actions.shaping.action._legacy`` under the node's shaping lock, ``pass_fds`` =
the held lock). The netdev marks and the HTB tree are written over netlink in-process.

The iptables tools here are two small scripts put first on PATH, a stand-in for the
real ones so the host's own mangle table is never touched: ``iptables-nft-save`` prints
a table with one rule of the old classifier, ``iptables-nft-restore`` reads its input,
writes its pid and sleeps, like a commit that takes a while. What is real: the action's
code path, the lock, the fork/exec with the inherited fd, the SIGKILL of the hook.
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

OLD_RULE = ('-A HOOKPACK-SHAPE -m physdev --physdev-in tap0 -m comment --comment '
            '"hookpack:vm1.example.test:0" -j MARK --set-xmark 0x10/0xffffffff')
SAVE = f"""#!/bin/sh
cat <<'TABLE'
*mangle
:PREROUTING ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:HOOKPACK-SHAPE - [0:0]
-A FORWARD -m comment --comment hookpack-shape -j HOOKPACK-SHAPE
{OLD_RULE}
COMMIT
TABLE
"""
RESTORE = """#!/bin/sh
cat > "$HOLD_DIR/restore.in"
echo $$ > "$HOLD_DIR/restore.pid.tmp" && mv "$HOLD_DIR/restore.pid.tmp" "$HOLD_DIR/restore.pid"
exec sleep "$HOLD_SECONDS"
"""
HOLDER = """
import os, pathlib, sys, threading, time
from hookpack.actions.shaping import action as shaping
from hookpack.action import Paths
from hookpack.record import fields
run = pathlib.Path(sys.argv[1])
paths = Paths(**{name: run for name in fields(Paths)})
apply = threading.Thread(target=shaping._legacy, daemon=True,
                         args=({"iptables_backend": "nf_tables"}, paths, lambda: 30.0))
apply.start()
pid = run / "restore.pid"
give_up = time.monotonic() + 20
while not pid.exists() and time.monotonic() < give_up:
    time.sleep(0.01)
print(pid.read_text().strip(), flush=True)
os.kill(os.getpid(), 9)
"""


def _tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("iptables-nft-save", SAVE), ("ip6tables-nft-save", SAVE),
                       ("iptables-nft-restore", RESTORE), ("ip6tables-nft-restore", RESTORE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_restore_child_of_a_killed_hook_keeps_the_lock_until_it_exits(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "PATH": f"{_tools(tmp_path)}:{os.environ['PATH']}",
           "HOLD_DIR": str(run), "HOLD_SECONDS": "3"}
    holder = subprocess.run([sys.executable, "-c", HOLDER, str(run)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    child = int(holder.stdout.split()[0])
    try:
        # the child is the restore of the old rule, started by the action's real path
        assert f"-D {OLD_RULE[3:]}" in (run / "restore.in").read_text()
        assert os.path.exists(f"/proc/{child}")
        with pytest.raises(LockTimeout), node_lock(run, "shaping", 0):
            pass
        give_up = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}") and time.monotonic() < give_up:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{child}")
        with node_lock(run, "shaping", 5):
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

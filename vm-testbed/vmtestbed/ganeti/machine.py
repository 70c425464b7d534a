"""What the lab may leave behind, observed: to prove ``down`` restores the machine.

Only lab-owned things are looked at (names the lab uses, paths it creates, processes
of Ganeti, of sshd on the lab's addresses and of QEMU with the lab's instances), so
other users of the machine (other testbeds booting QEMU) do not disturb the check.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vmtestbed.ganeti import proc
from vmtestbed.ganeti.hookpack_install import VENV
from vmtestbed.ganeti.layout import DOMAIN, HOSTS_TAG, NET_PREFIX, PRIVATE_DIRS, STATE_DIR
from vmtestbed.ganeti.packages import POLICY_RC_D

WATCHED_PATHS = (*PRIVATE_DIRS, str(VENV.parent), str(STATE_DIR))


def snapshot() -> dict[str, list[str]]:
    """The lab-related state of the machine, as sorted lists of strings."""
    return {
        "netns": sorted(n for n in _netns() if n.startswith("gnt")),
        "links": sorted(n for n in os.listdir("/sys/class/net") if n.startswith("gnt")),
        "hosts": sorted(line for line in Path("/etc/hosts").read_text().splitlines()
                        if HOSTS_TAG in line or DOMAIN in line),
        "mounts": sorted(_lab_mounts()),
        "paths": sorted(p for p in WATCHED_PATHS if os.path.lexists(p)),
        "policy_rc_d": [_digest(POLICY_RC_D)],
        "processes": sorted(_lab_processes()),
        "loops": sorted(_lab_loops()),
    }


def diff(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """Human-readable differences: ``"netns: left behind gntlab1"``..."""
    out = []
    for key in sorted(set(before) | set(after)):
        b, a = set(before.get(key, [])), set(after.get(key, []))
        out += [f"{key}: left behind {x}" for x in sorted(a - b)]
        out += [f"{key}: gone {x}" for x in sorted(b - a)]
    return out


def _netns() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


def _lab_mounts() -> list[str]:
    marks = ("gntlab", str(STATE_DIR), "/srv/ganeti", "hookpack")
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if any(m in fields[3] or m in fields[4] for m in marks):
            out.append(f"{fields[3]} on {fields[4]}")
    return out


def _lab_processes() -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        args = raw.decode("utf-8", "replace").split("\0")
        cmd = " ".join(args).strip()
        if not cmd:
            continue  # kernel thread or zombie
        exe = os.path.basename(args[0])
        if (exe.startswith("ganeti-")
                or ("qemu" in exe and f".{DOMAIN}" in cmd)
                or (exe == "sshd" and f"ListenAddress={NET_PREFIX}." in cmd)
                or str(STATE_DIR) in cmd):
            out.append(f"{entry} {cmd[:120]}")
    return out


def _lab_loops() -> list[str]:
    r = proc.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                 check=False)
    return [line for line in r.stdout.splitlines()
            if "/srv/ganeti/" in line or str(STATE_DIR) in line]


def _digest(path: Path) -> str:
    try:
        return f"{path} sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    except FileNotFoundError:
        return f"{path} absent"

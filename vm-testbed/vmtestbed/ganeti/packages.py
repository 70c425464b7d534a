"""Debian packages the Ganeti lab needs, installed without starting daemons.

Installing ``ganeti`` and ``openssh-server`` would start ganeti-noded,
ganeti-confd and sshd in the root namespace. Debian's ``invoke-rc.d`` asks
``/usr/sbin/policy-rc.d`` first: exit status 101 means "do not start". We put
one in place only if the machine has none and remove only the one we created.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

PACKAGES = (
    "ganeti",
    "openssh-server",
    "openssh-client",
    "qemu-system-x86",
    "qemu-utils",
    "socat",
    "busybox-static",
    # no linux-image-cloud-amd64: the guests' kernel is unpacked from its .deb into the
    # testbed cache (vmtestbed.kernel), so the host's boot kernel stays as it is
)

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_POLICY_SCRIPT = "#!/bin/sh\n# vmtestbed-lab: no daemons during package installs\nexit 101\n"


def missing(packages: Iterable[str] = PACKAGES) -> list[str]:
    """Return the packages of ``packages`` that dpkg does not list as installed."""
    out = []
    for name in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in proc.stdout:
            out.append(name)
    return out


def ensure_installed(packages: Iterable[str] = PACKAGES) -> float:
    """Install whatever of ``packages`` is missing; return the seconds it took (0 if none)."""
    todo = missing(packages)
    if not todo:
        return 0.0
    start = time.monotonic()
    created = False
    if not POLICY_RC_D.exists():
        POLICY_RC_D.write_text(_POLICY_SCRIPT)
        POLICY_RC_D.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if created:
            POLICY_RC_D.unlink(missing_ok=True)
    return time.monotonic() - start

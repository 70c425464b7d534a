"""scripts/setup: refuses to run as non-root with a clear message; installs no kernel."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_setup_says_it_needs_root():
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           str(REPO / "scripts" / "setup")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1
    assert "run this as root" in proc.stderr and "no sudo" in proc.stderr, proc.stderr
    assert not proc.stdout  # nothing attempted


def test_no_kernel_package_is_installed_on_the_host():
    # The guests' kernel is unpacked into the testbed cache (vmtestbed.kernel): a
    # linux-image-* package here would change the host's boot kernel.
    packages = [line.strip() for line in (REPO / "scripts" / "apt-packages.txt")
                .read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert not [p for p in packages if re.match(r"linux-image", p)], packages
    from vmtestbed.ganeti.packages import PACKAGES
    assert not [p for p in PACKAGES if p.startswith("linux-image")], PACKAGES

"""The pytest command a test guest runs (the host's userspace, the stock kernel).

No cache and no addopts (the guest's run is the host's test's business), and no
Hypothesis plugin: no test run in a guest uses it, and its import adds to every start
of pytest, which TCG stretches (bench/guest_pytest_start.py measures by how much).
"""

from __future__ import annotations

import sys

GUEST_PYTEST = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=",
                "-p", "no:hypothesispytest")

"""Where the testbed keeps its build cache and state."""

from __future__ import annotations

import os
from pathlib import Path

TESTBED_DIR = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Build cache: ``$VMTESTBED_CACHE``, else ``vm-testbed/.cache`` (gitignored)."""
    env = os.environ.get("VMTESTBED_CACHE")
    return Path(env) if env else TESTBED_DIR / ".cache"

"""NUMA pinning on a multi-node host: ``inner/`` runs only inside the stock-kernel guest.

This machine has one NUMA node. The outer test (``test_numa_in_guest.py``) boots the
hostguest with two and with four NUMA nodes (QEMU ``-numa``) and runs ``pytest inner/``
there (``HPG_GUEST=1``); every inner test must pass, none may be skipped.
"""

from __future__ import annotations

import os

from vmtestbed.hostguest_plugin import host_guest_image, run_in_host_guest

__all__ = ["host_guest_image", "run_in_host_guest"]

collect_ignore_glob = [] if os.environ.get("HPG_GUEST") == "1" else ["inner/*"]
noskip_runs_elsewhere = {"inner/*": "inside the stock-kernel guest, by test_numa_in_guest.py"}

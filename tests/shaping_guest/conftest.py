"""fw-path shaping tests: ``inner/`` runs only inside the stock-kernel guest.

The host kernel has no cls_fw, so ``inner/`` is not even collected on the host
(``HPG_GUEST=1`` is set by the outer test for the guest's pytest). The outer test
(``test_in_guest.py``) boots the guest, runs ``pytest inner/`` there and demands
that every inner test passed and none was skipped.
"""

from __future__ import annotations

import os

from vmtestbed.hostguest_plugin import host_guest_image, run_in_host_guest

__all__ = ["host_guest_image", "run_in_host_guest"]

collect_ignore_glob = [] if os.environ.get("HPG_GUEST") == "1" else ["inner/*"]
# for the not-run-as-written guard (tests/helpers/noskip.py): these run, in the guest
noskip_runs_elsewhere = {"inner/*": "inside the stock-kernel guest, by test_in_guest.py"}

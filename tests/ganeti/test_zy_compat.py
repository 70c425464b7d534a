"""After every other test of a lab: what it recorded for the compatibility table
(vmtestbed.ganeti.compat) is what docs/compat/ganeti-<version>.json says.

``VMTESTBED_COMPAT_UPDATE=1`` writes this run's record to that file instead (then
regenerate docs/compatibility.md with ``python -m vmtestbed.ganeti.compat render``);
either way every fact of the table must have been recorded.
"""

from __future__ import annotations

import os

import pytest
from vmtestbed.ganeti import compat

pytestmark = [pytest.mark.ganeti, pytest.mark.slow]


def test_the_lab_recorded_what_the_compatibility_table_says(ganeti_lab, ganeti_version):
    got = compat.recorded(ganeti_version)
    missing = [key for key in compat.FACTS if key not in got]
    assert not missing, f"Ganeti {ganeti_version}: no test recorded {missing} in this run"
    if os.environ.get("VMTESTBED_COMPAT_UPDATE") == "1":
        print(f"wrote {compat.save(ganeti_version, got)}")
        return
    want = compat.load(ganeti_version)
    differ = {k: (want.get(k), got[k]) for k in compat.FACTS if want.get(k) != got[k]}
    assert not differ, (f"Ganeti {ganeti_version} behaved otherwise than "
                        f"{compat.record_file(ganeti_version)} says (committed, recorded): "
                        f"{differ}")

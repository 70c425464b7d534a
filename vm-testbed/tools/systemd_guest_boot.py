#!/usr/bin/env python3
"""Measure the systemd guest: image build (cold or cached), boot to ssh, a reboot.

    VMTESTBED_CACHE=/tmp/empty-cache python3 vm-testbed/tools/systemd_guest_boot.py  # cold
    python3 vm-testbed/tools/systemd_guest_boot.py                                     # cached

Prints the wall times and the guest's own `systemd-analyze time`. Run as root.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vmtestbed import systemd_guest as sg
from vmtestbed.accel import accelerator
from vmtestbed.guest import build_guest_image


def main() -> int:
    print(f"host load {os.getloadavg()[0]:.1f}, accel {accelerator(build_guest_image())}")
    t0 = time.monotonic()
    image = sg.build_systemd_image()
    print(f"image: {time.monotonic() - t0:.1f} s ({image.disk})")
    with sg.SystemdGuest(image) as guest:
        print(f"boot to ssh: {guest.boot_seconds:.1f} s")
        print("  " + guest.out("systemd-analyze time | head -1").strip())
        print(f"reboot to ssh: {guest.reboot():.1f} s")
        print("  " + guest.out("systemd-analyze time | head -1").strip())
    print(f"host load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

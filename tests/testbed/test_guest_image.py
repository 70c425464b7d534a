"""The guest image: built from Debian packages, cached, complete."""

import subprocess

from vmtestbed.guest import BOOT_MODULES, build_guest_image


def test_image_is_cached_and_has_what_init_needs(tmp_path):
    first = build_guest_image(cache_dir=tmp_path)
    again = build_guest_image(cache_dir=tmp_path)
    assert again == first
    assert first.kernel.stat().st_size > 1_000_000
    assert first.modules_dir.name == first.kernel_version
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=first.initrd.open("rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    for needed in ("init", "bin/busybox", "usr/bin/iperf3", "etc/acpi/PWRF/00000080",
                   f"lib/modules/{first.kernel_version}/kernel/net/sched/sch_htb.ko",
                   f"lib/modules/{first.kernel_version}/kernel/net/sched/cls_fw.ko"):
        assert needed in listing
    for mod in BOOT_MODULES:
        assert f"lib/modules/{first.kernel_version}/{mod}" in listing
    assert any(name.startswith("lib/x86_64-linux-gnu/libiperf") for name in listing)

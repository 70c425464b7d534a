"""The kernel and initrd the lab's instances boot (Ganeti's kvm ``kernel_path``/``initrd_path``).

The testbed's :func:`vmtestbed.guest.build_guest_image` (busybox initramfs with acpid,
NIC setup from ``hp.ip=`` and markers on the serial console) when it is available; else
the host's own cloud kernel and initrd as a placeholder: QEMU starts, which is all
Ganeti needs to call an instance running, but the guest never finishes booting and
shutdowns wait out Ganeti's timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LabGuest:
    kernel: Path
    initrd: Path
    real: bool  # False: placeholder, no acpid, no NIC setup, no markers


def lab_guest() -> LabGuest:
    try:
        from vmtestbed.guest import build_guest_image
    except ImportError:
        return _placeholder()
    image = build_guest_image()
    return LabGuest(kernel=image.kernel, initrd=image.initrd, real=True)


def _placeholder() -> LabGuest:
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        from vmtestbed.ganeti.errors import LabError

        raise LabError("no /boot/vmlinuz-*-cloud-amd64: install linux-image-cloud-amd64")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    return LabGuest(kernel=kernel, initrd=Path("/boot") / f"initrd.img-{version}", real=False)

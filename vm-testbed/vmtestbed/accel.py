"""Which QEMU accelerator can boot the guest: KVM if it works, else TCG.

On some hosts (nested setups) ``/dev/kvm`` exists and QEMU starts under KVM,
but a Linux guest hangs before printing anything. So the probe boots the real
guest image under KVM and waits for its boot marker; the answer is cached per
host kernel and QEMU version. ``VMTESTBED_ACCEL=kvm|tcg`` skips the probe.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from vmtestbed import host, paths
from vmtestbed.guest import BOOT_MARKER, GuestImage

QEMU = "qemu-system-x86_64"
# One thread per vCPU under TCG too (MTTCG): what vCPU pinning tests need.
TCG_ARGS = ("-accel", "tcg,thread=multi")
KVM_ARGS = ("-accel", "kvm")
PROBE_TIMEOUT = 8.0  # a working KVM boots the guest in about 1 s


def accel_args(image: GuestImage) -> tuple[str, ...]:
    """QEMU arguments selecting the accelerator (``-accel ...``)."""
    return KVM_ARGS if accelerator(image) == "kvm" else TCG_ARGS


def accelerator(image: GuestImage) -> str:
    """``kvm`` or ``tcg``: ``$VMTESTBED_ACCEL``, else the cached probe result."""
    forced = os.environ.get("VMTESTBED_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ValueError(f"VMTESTBED_ACCEL={forced!r}: use kvm or tcg")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    cache = paths.cache_dir() / "accel.json"
    key = f"{os.uname().release} {_qemu_version()} {image.kernel.parent.name}"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return str(cached["accel"])
    except (FileNotFoundError, ValueError):
        pass
    result = "kvm" if probe_kvm(image) else "tcg"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": result}))
    return result


def probe_kvm(image: GuestImage, timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot the guest under KVM; True if its boot marker appears within ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="hpt-probe-") as tmp:
        console = Path(tmp) / "console"
        proc = subprocess.Popen(
            [QEMU, "-accel", "kvm", "-m", "128", "-display", "none", "-nodefaults",
             "-no-user-config", "-serial", f"file:{console}",
             "-kernel", str(image.kernel), "-initrd", str(image.initrd),
             "-append", "console=ttyS0 quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=host.owned_env(),
        )
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if console.exists() and BOOT_MARKER in console.read_text(errors="replace"):
                    return True
                time.sleep(0.1)
            return False
        finally:
            proc.kill()
            proc.wait()


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]

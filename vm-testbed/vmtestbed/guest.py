"""Guest image: the Debian cloud kernel plus a busybox initramfs, built once and cached.

The initramfs is assembled from files of Debian packages (the kernel and its modules
unpacked from ``linux-image-cloud-amd64``'s .deb into the testbed cache by
:mod:`vmtestbed.kernel`, not installed; the host's ``busybox-static``, ``iperf3``), so nothing is
downloaded. Its ``/init`` (busybox sh, PID 1):

1. mounts proc, sysfs, devtmpfs;
2. loads the virtio modules in dependency order (there is no udev):
   ``virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
   virtio_blk failover net_failover virtio_net evdev button``;
3. configures its NICs from the kernel command line;
4. starts busybox ``acpid`` (ACPI power button -> ``poweroff -f``) and busybox
   ``uevent`` (prints a marker when a disk's capacity changes);
5. prints ``HP-BOOT-DONE`` and serves a non-interactive shell on ttyS0 (echo
   off) for :meth:`vmtestbed.console.SerialConsole.run`.

Kernel command line keys (all optional):

``hp.ip=ADDR/LEN[,ADDR/LEN...]``
    address of eth0, eth1, ... in NIC order; ``-`` skips a NIC.
``hp.gw=ADDR``
    default route.
``hp.hostname=NAME``
    the guest's hostname (default ``hpguest``).

Serial console markers (one line each, ``\\n`` terminated):

``HP-BOOT-DONE uptime=<s>``
    init finished; the shell on ttyS0 reads commands from now on.
``HP-DISK <dev> size=<bytes>``
    printed for every virtio disk at boot and again whenever its capacity
    changes (kernel uevent ``change`` with ``RESIZE=1``, sent by
    ``set_capacity_and_notify``, e.g. after QMP ``block_resize``).
``HP-POWEROFF``
    acpid got the power button event (QMP ``system_powerdown``).
``HP-ERROR <what>``
    something in init failed (a module did not load, a NIC is missing).

Extra kernel modules under ``/lib/modules/<ver>`` in the guest: all of
``kernel/net/sched`` (sch_htb, cls_fw, cls_u32, act_mirred, ...), ``ifb`` and
``modules.dep``, so ``modprobe sch_htb`` works inside the guest. Programs: busybox
applets, plus iperf3 and iproute2's ``ip`` and ``tc`` with their libraries, and
``/bin/hpflood`` (``hpflood.c`` beside this module, built static with gcc: a tenant's
raw, 802.1Q and QinQ frame flood, paced, never blocking; the guest has no Python). Call
those two by full path (``/sbin/tc``, ``/sbin/ip``): Debian's busybox is built with
FEATURE_SH_STANDALONE, so its shell runs its own (limited) applet for a bare ``tc``
whatever PATH says.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmtestbed import paths
from vmtestbed.kernel import stock_kernel

# Bump when the layout of the image changes in a way the input hash does not see.
_BUILD_VERSION = "1"

BOOT_MARKER = "HP-BOOT-DONE"
DISK_MARKER_RE = r"HP-DISK (?P<dev>\w+) size=(?P<size>\d+)"
POWEROFF_MARKER = "HP-POWEROFF"

# Dependency order, from modules.dep of the 6.1 cloud kernel (no udev in the guest
# to resolve it). evdev + button give acpid the ACPI power button as an input device.
BOOT_MODULES = (
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/input/evdev.ko",
    "kernel/drivers/acpi/button.ko",
)
# Copied but not loaded: for shaping tests inside a guest (modprobe works).
EXTRA_MODULE_DIRS = ("kernel/net/sched",)
EXTRA_MODULES = ("kernel/drivers/net/ifb.ko",)

# Programs copied with the shared libraries ldd reports: host path -> path in the
# guest. iproute2's ip and tc replace busybox's applets, which lack HTB classes,
# filters and JSON output (a shaping test may want to shape inside a guest too).
DYNAMIC_PROGRAMS = {
    "/usr/bin/iperf3": "usr/bin/iperf3",
    "/usr/sbin/tc": "sbin/tc",
    "/usr/bin/ip": "sbin/ip",
}

INIT_SCRIPT = r"""#!/bin/sh
# vmtestbed guest init (PID 1). See vmtestbed/guest.py for the contract.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/run /var/log
mount -t devpts devpts /dev/pts
echo 1 > /proc/sys/kernel/printk
M=/lib/modules/$(uname -r)
while read -r mod; do
    insmod "$M/$mod" || echo "HP-ERROR insmod $mod"
done < /etc/hp-modules

HP_IP=""; HP_GW=""; HP_HOSTNAME=hpguest
for kv in $(cat /proc/cmdline); do
    case "$kv" in
        hp.ip=*) HP_IP="${kv#hp.ip=}" ;;
        hp.gw=*) HP_GW="${kv#hp.gw=}" ;;
        hp.hostname=*) HP_HOSTNAME="${kv#hp.hostname=}" ;;
    esac
done
hostname "$HP_HOSTNAME"
ip link set lo up
n=0
for addr in $(echo "$HP_IP" | tr ',' ' '); do
    dev=eth$n; n=$((n + 1))
    [ "$addr" = "-" ] && continue
    i=0
    while [ ! -e /sys/class/net/$dev ] && [ $i -lt 50 ]; do usleep 100000; i=$((i + 1)); done
    ip addr add "$addr" dev $dev && ip link set $dev up || echo "HP-ERROR nic $dev $addr"
done
[ -n "$HP_GW" ] && { ip route add default via "$HP_GW" || echo "HP-ERROR gw $HP_GW"; }

acpid -c /etc/acpi -l /var/log/acpid.log
uevent /etc/hp-uevent &
for d in /sys/block/vd*; do
    [ -e "$d/size" ] && echo "HP-DISK ${d##*/} size=$(( $(cat $d/size) * 512 ))"
done
stty -F /dev/ttyS0 -echo
echo "HP-BOOT-DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
# A script read from the tty (not stdin) keeps ash non-interactive: no prompt, no
# job control; a syntax error ends it and the loop starts a fresh one.
while :; do
    sh /dev/ttyS0 >/dev/ttyS0 2>&1
done
"""

UEVENT_SCRIPT = r"""#!/bin/sh
# Run by busybox uevent for each kernel uevent: report disk capacity changes.
if [ "$ACTION" = change ] && [ "$RESIZE" = 1 ] && [ -e "/sys/block/$DEVNAME/size" ]; then
    echo "HP-DISK $DEVNAME size=$(( $(cat /sys/block/$DEVNAME/size) * 512 ))" > /dev/ttyS0
fi
"""

# busybox acpid maps the power button event "PWRF" to <confdir>/PWRF/00000080 by its
# built-in action table (no /etc/acpid.conf needed).
POWEROFF_SCRIPT = r"""#!/bin/sh
echo HP-POWEROFF > /dev/ttyS0
sync
poweroff -f
"""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: pass ``kernel`` to ``-kernel`` and ``initrd`` to ``-initrd``."""

    kernel: Path
    initrd: Path
    modules_dir: Path  # the matching lib/modules/<version> (unpacked in the testbed cache)
    kernel_version: str

    @property
    def boot_marker(self) -> str:
        return BOOT_MARKER


class GuestBuildError(RuntimeError):
    """The guest image could not be built (a Debian package is missing, ...)."""


def find_kernel_version() -> str:
    """The version of the guests' kernel: Debian's cloud kernel, unpacked from its .deb
    into the testbed cache (:mod:`vmtestbed.kernel`), never installed on the host."""
    return stock_kernel().version


def build_guest_image(cache_dir: Path | None = None) -> GuestImage:
    """Build the guest image, or return the cached one if its inputs did not change.

    Inputs are the kernel, its modules, busybox, iperf3 and its libraries, and the
    scripts in this module; their paths, sizes and mtimes (and the scripts' text)
    form the cache key. Safe against concurrent builders: the result is renamed
    into place atomically.
    """
    cache = (cache_dir or paths.cache_dir()) / "guest"
    kernel = stock_kernel()
    version = kernel.version
    modules_dir = kernel.modules_dir
    kernel_src = kernel.vmlinuz
    busybox = _which("busybox", "busybox-static")
    files = _collect_files(modules_dir, busybox)
    files["bin/hpflood"] = build_flooder(cache)
    key = _cache_key(kernel_src, files)
    out = cache / key
    image = GuestImage(
        kernel=out / "vmlinuz", initrd=out / "initrd.img", modules_dir=modules_dir,
        kernel_version=version,
    )
    if image.kernel.exists() and image.initrd.exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        tmpdir = Path(tmp)
        root = tmpdir / "root"
        _populate_root(root, version, busybox, files)
        result = tmpdir / "result"
        result.mkdir()
        shutil.copyfile(kernel_src, result / "vmlinuz")
        _write_cpio(root, result / "initrd.img")
        try:
            result.rename(out)
        except OSError:
            if not (image.kernel.exists() and image.initrd.exists()):
                raise
            # another builder won the race; its result is identical
    return image


FLOODER_SOURCE = Path(__file__).with_name("hpflood.c")


def build_flooder(cache: Path) -> Path:
    """``hpflood`` compiled static (cached by the source's hash; atomic rename)."""
    digest = hashlib.sha256(FLOODER_SOURCE.read_bytes()).hexdigest()[:16]
    out = cache / f"hpflood-{digest}"
    if out.exists():
        return out
    gcc = _which("gcc", "gcc")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        built = Path(tmp) / "hpflood"
        proc = subprocess.run([str(gcc), "-static", "-O2", "-Wall", "-o", str(built),
                               str(FLOODER_SOURCE)], capture_output=True, text=True)
        if proc.returncode:
            raise GuestBuildError(f"gcc {FLOODER_SOURCE.name}: {proc.stderr.strip()[-800:]} "
                                  "(static linking needs libc6-dev)")
        built.rename(out)
    return out


def _which(program: str, package: str) -> Path:
    found = shutil.which(program)
    if not found:
        raise GuestBuildError(f"{program} not found: install the Debian package {package}")
    return Path(found).resolve()


def _collect_files(modules_dir: Path, busybox: Path) -> dict[str, Path]:
    """Map of path inside the image -> host file, for everything but the scripts."""
    files: dict[str, Path] = {"bin/busybox": busybox}
    mod_root = f"lib/modules/{modules_dir.name}"
    rel_modules = list(BOOT_MODULES) + list(EXTRA_MODULES)
    for d in EXTRA_MODULE_DIRS:
        rel_modules += sorted(
            str(p.relative_to(modules_dir)) for p in (modules_dir / d).glob("*.ko")
        )
    for rel in rel_modules:
        src = modules_dir / rel
        if not src.exists():
            unpacked = modules_dir.parent.parent.parent
            raise GuestBuildError(f"kernel module {src} missing: remove {unpacked} to unpack "
                                  "the kernel again")
        files[f"{mod_root}/{rel}"] = src
    for name in ("modules.dep", "modules.alias", "modules.builtin", "modules.order"):
        files[f"{mod_root}/{name}"] = modules_dir / name
    for prog, dest in DYNAMIC_PROGRAMS.items():
        src = Path(prog)
        if not src.exists():
            package = "iproute2" if src.name in ("ip", "tc") else src.name
            raise GuestBuildError(f"{prog} missing: install the Debian package {package}")
        files[dest] = src
        for lib in _shared_libraries(src):
            # keep the loader's path (/lib64/ld-linux-x86-64.so.2) and the libraries' own
            files[str(lib).lstrip("/")] = lib.resolve()
    return files


def _shared_libraries(program: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(program)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _cache_key(kernel: Path, files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    h.update(_BUILD_VERSION.encode())
    for text in (INIT_SCRIPT, UEVENT_SCRIPT, POWEROFF_SCRIPT, "\n".join(BOOT_MODULES)):
        h.update(text.encode())
    for dest, src in [*sorted(files.items()), ("vmlinuz", kernel)]:
        st = src.stat()
        h.update(f"{dest}={src}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _populate_root(root: Path, version: str, busybox: Path, files: dict[str, Path]) -> None:
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/acpi/PWRF", "proc", "sys", "dev",
              "tmp", "run", "root", "lib64"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for dest, src in files.items():
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    applets = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    _write_exec(root / "init", INIT_SCRIPT)
    _write_exec(root / "etc/hp-uevent", UEVENT_SCRIPT)
    _write_exec(root / "etc/acpi/PWRF/00000080", POWEROFF_SCRIPT)
    (root / "etc/hp-modules").write_text("\n".join(BOOT_MODULES) + "\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/version").write_text(f"vmtestbed guest, kernel {version}\n")


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _write_cpio(root: Path, out: Path) -> None:
    """Write an uncompressed newc cpio archive of root.

    Uncompressed on purpose: under TCG the guest kernel would spend longer
    decompressing than QEMU spends copying the bigger file in via fw_cfg DMA.
    """
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with out.open("wb") as f:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
            cwd=root, input="\n".join(names).encode() + b"\n", stdout=f, check=True,
        )
    os.chmod(out, 0o644)

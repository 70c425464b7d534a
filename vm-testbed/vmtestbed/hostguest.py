"""A stock-kernel guest that runs this machine's own userspace.

For tests that need kernel features the host kernel lacks (``cls_fw``), this
boots Debian's cloud kernel (the one :mod:`vmtestbed.guest` uses) under QEMU
with the host's root filesystem shared in over virtiofs, read-only, and runs
one command in it: the project's venv, pytest, iproute2, iptables, iperf3 are
all the host's own files.

Layout::

    host                                      guest (TCG, Debian 6.1 cloud kernel)
    virtiofsd --socket-path=S                 /init (busybox, initramfs, stage 1):
      in its own mount namespace,               insmod virtio_pci, virtiofs, overlay
      -o source=<read-only bind of />           mount -t virtiofs hostroot /lower -o ro
    qemu -chardev socket,path=S ...             overlay(lower=/lower, upper=tmpfs) -> /newroot
         -device vhost-user-fs-pci              switch_root /newroot /bin/sh <job>/stage2.sh
         -object memory-backend-memfd,share=on stage 2 (host's dash, in the overlay):
                                                proc, sys, dev, tmpfs /run /tmp; modprobe ...
                                                HPG-READY; run the command; HPG-EXIT rc=N
                                                poweroff (QEMU runs with -no-reboot)

The host side is read-only twice over: virtiofsd serves a read-only bind
mount of ``/`` (not recursive: the host's /proc, /sys, /dev, /run/netns are
not in it), and the guest mounts it ``ro``; every write in the guest lands in
the overlay's tmpfs and vanishes at power-off. Results come back on the serial
console (a file), between markers:

``HPG-READY uptime=<s>``   stage 2 is about to run the command (boot-to-command time)
``HPG-EXIT rc=<n>``        the command's exit status
``HPG-ERROR <what>``       a boot step failed

Stage 2 mounts a fresh tmpfs on ``/tmp``; directories under ``/tmp`` the job needs
(its ``cwd`` -- e.g. a checkout cloned under /tmp -- the job directory, this
checkout) are moved through it, so a run from ``/tmp/<clone>`` finds its files.

The job files (stage 2 script) live in a directory under the testbed cache,
which is on the host's root filesystem and so visible in the guest at the same
path. Modules the guest needs beyond the initramfs are loaded with the host's
``modprobe -d <kernel root>`` from the guest kernel's modules: the kernel package
unpacked in the testbed cache (:mod:`vmtestbed.kernel`; the host does not have that
kernel installed), also visible in the guest at the same path. That directory is also
bound on ``/lib/modules/<version>`` in the overlay, so the kernel's own autoload (which
runs ``/sbin/modprobe``) finds a module nobody listed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmtestbed import host, paths
from vmtestbed.errors import GuestKernelLockup, TestbedError
from vmtestbed.guest import _which, _write_cpio, _write_exec
from vmtestbed.kernel import stock_kernel

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
QEMU = "qemu-system-x86_64"
TAG = "hostroot"
READY_RE = re.compile(r"^HPG-READY uptime=(?P<uptime>[\d.]+)$", re.MULTILINE)
EXIT_RE = re.compile(r"^HPG-EXIT rc=(?P<rc>\d+)$", re.MULTILINE)
ERROR_RE = re.compile(r"^HPG-ERROR (?P<what>.*)$", re.MULTILINE)
LOCKUP_RE = re.compile(r"BUG: soft lockup")
_BUILD_VERSION = "1"

# Loaded by stage 1 from the initramfs; dependencies resolved from modules.dep.
INITRAMFS_MODULES = ("virtio_pci", "virtiofs", "overlay")
# Loaded by stage 2 with the host's modprobe (shaping tests need them all).
DEFAULT_MODULES = (
    "veth", "tun", "bridge", "br_netfilter", "sch_htb", "sch_fq_codel", "sch_ingress", "cls_fw",
    "cls_u32", "act_mirred", "ifb", "nf_tables", "nft_compat", "x_tables", "xt_mark",
    "xt_CLASSIFY", "xt_physdev", "iptable_mangle",
)

STAGE1 = r"""#!/bin/sh
# hostguest stage 1 (PID 1 in the initramfs). See vmtestbed/hostguest.py.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
fail() { echo "HPG-ERROR $*" > /dev/ttyS0; sync; poweroff -f; }
M=/lib/modules/$(uname -r)
while read -r mod; do
    insmod "$M/$mod" || fail "insmod $mod"
done < /etc/hpg-modules
JOB=""
for kv in $(cat /proc/cmdline); do
    case "$kv" in hpg.job=*) JOB="${kv#hpg.job=}" ;; esac
done
[ -n "$JOB" ] || fail "no hpg.job= on the kernel command line"
mkdir -p /lower /rw /newroot
i=0
until mount -t virtiofs -o ro hostroot /lower; do
    i=$((i + 1)); [ $i -lt 50 ] || fail "mount virtiofs hostroot"; usleep 100000
done
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "mount overlay"
[ -r "/newroot$JOB" ] || fail "job script $JOB not visible in the shared root"
umount /proc /sys
umount /dev
exec switch_root /newroot /bin/sh "$JOB"
"""

STAGE2 = r"""#!/bin/sh
# hostguest stage 2 (PID 1 in the host's root, overlaid). Written per job.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# A fresh /tmp, with the directories under /tmp the job needs moved through it.
i=0
for p in {keep_tmp}; do
    i=$((i + 1)); mkdir -p /run/hpg-keep/$i; mount --bind "$p" /run/hpg-keep/$i
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
i=0
for p in {keep_tmp}; do
    i=$((i + 1)); mkdir -p "$p"; mount --move /run/hpg-keep/$i "$p" || echo "HPG-ERROR keep $p"
done
mkdir -p /run/netns /run/lock
exec </dev/null >/dev/ttyS0 2>&1
off() {{ sync; echo o > /proc/sysrq-trigger; sleep 10; }}
for m in {modules}; do
    modprobe -d {modules_root} "$m" || echo "HPG-ERROR modprobe $m"
done
# The kernel's own module autoload runs /sbin/modprobe, which looks in /lib/modules:
# the guest kernel's modules are bound there (the overlay is writable).
K=$(uname -r)
mkdir -p "/lib/modules/$K" && mount --bind "{modules_root}/lib/modules/$K" "/lib/modules/$K" \
    || echo "HPG-ERROR bind /lib/modules/$K"
hostname hpguest
ip link set lo up
cd {cwd} || {{ echo "HPG-ERROR cd {cwd}"; off; }}
echo "HPG-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
env {env} {argv}
echo "HPG-EXIT rc=$?"
off
"""


@dataclass(frozen=True)
class HostGuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str
    modules_root: Path = Path("/")  # lib/modules/<kernel_version> is below it


@dataclass
class GuestRun:
    """The outcome of one :func:`run_in_guest`."""

    rc: int
    output: str  # what the command printed (between HPG-READY and HPG-EXIT)
    console: str  # the whole serial console
    boot_to_command: float  # guest uptime when the command started (s)
    host_to_command: float  # host wall time from QEMU start to HPG-READY (s)
    total: float  # host wall time from virtiofsd start to QEMU exit (s)
    errors: list[str] = field(default_factory=list)


def module_load_order(modules_dir: Path, names: Sequence[str]) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``names`` and their dependencies, deps first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        base = Path(mod).name.split(".ko")[0]
        by_name[base.replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps.get(mod, []):
            visit(dep)
        order.append(mod)

    for name in names:
        mod = by_name.get(name.replace("-", "_"))
        if mod is None:
            builtin = (modules_dir / "modules.builtin").read_text()
            if re.search(rf"/{re.escape(name)}\.ko$", builtin, re.MULTILINE):
                continue
            raise TestbedError(f"kernel module {name} not in {modules_dir}/modules.dep")
        visit(mod)
    return order


def build_image(cache_dir: Path | None = None) -> HostGuestImage:
    """The stage-1 initramfs (busybox + virtio/virtiofs/overlay modules), cached."""
    cache = (cache_dir or paths.cache_dir()) / "hostguest"
    stock = stock_kernel()
    version = stock.version
    modules_dir = stock.modules_dir
    kernel = stock.vmlinuz
    busybox = _which("busybox", "busybox-static")
    mods = module_load_order(modules_dir, INITRAMFS_MODULES)
    h = hashlib.sha256(f"{_BUILD_VERSION}\n{STAGE1}\n{mods}".encode())
    for src in [kernel, busybox, *(modules_dir / m for m in mods)]:
        st = src.stat()
        h.update(f"{src}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    out = cache / h.hexdigest()[:16]
    image = HostGuestImage(kernel=kernel, initrd=out / "initrd.img", kernel_version=version,
                           modules_root=stock.root)
    if image.initrd.exists():
        return image
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin/busybox")
        for applet in ("sh", "mount", "umount", "insmod", "mkdir", "cat", "poweroff",
                       "switch_root", "usleep", "sync"):
            (root / "bin" / applet).symlink_to("busybox")
        for m in mods:
            dest = root / "lib/modules" / version / m
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules_dir / m, dest)
        (root / "etc/hpg-modules").write_text("\n".join(mods) + "\n")
        _write_exec(root / "init", STAGE1)
        result = Path(tmp) / "result"
        result.mkdir()
        _write_cpio(root, result / "initrd.img")
        try:
            result.rename(out)
        except OSError:
            if not image.initrd.exists():
                raise
    return image


def run_in_guest(
    argv: Sequence[str],
    *,
    cwd: Path | str = "/",
    env: Mapping[str, str] | None = None,
    modules: Sequence[str] = DEFAULT_MODULES,
    timeout: float = 900.0,
    memory_mib: int = 2048,
    vcpus: int = 2,
    image: HostGuestImage | None = None,
    keep_dir: Path | None = None,
    numa_nodes: int = 1,
    numa_distance: int = 20,
    kernel_args: str = "",
) -> GuestRun:
    """Boot the stock-kernel guest, run ``argv`` in the host's userspace, power off.

    Returns the exit status and output; raises :class:`TestbedError` when the
    guest does not get to run the command, or does not finish within ``timeout``.
    virtiofsd and QEMU are killed by pid whatever happens. ``keep_dir``: copy the
    console log there (for reports). ``numa_nodes`` > 1: the guest gets that many NUMA
    nodes, ``vcpus`` and ``memory_mib`` split evenly over them (see :func:`numa_args`).
    ``kernel_args``: more guest kernel command line (e.g. ``isolcpus=7``).
    """
    image = image or build_image()
    jobs = paths.cache_dir() / "hostguest-jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job = Path(tempfile.mkdtemp(dir=jobs, prefix=f"{host.unique_name()}-"))
    pids: list[int] = []
    start = time.monotonic()
    try:
        rodir = job / "hostroot"
        rodir.mkdir()
        sock = job / "vfs.sock"
        console = job / "console.log"
        stage2 = job / "stage2.sh"
        env_args = [shlex.quote(f"{k}={v}") for k, v in (env or {}).items()]
        _write_exec(stage2, STAGE2.format(
            modules=" ".join(shlex.quote(m) for m in modules),
            modules_root=shlex.quote(str(image.modules_root)),
            keep_tmp=" ".join(shlex.quote(p) for p in kept_under_tmp(
                [Path(cwd), job, paths.TESTBED_DIR.parent])),
            cwd=shlex.quote(str(cwd)),
            env=" ".join(env_args),
            argv=" ".join(shlex.quote(a) for a in argv),
        ))
        vfs_log = (job / "virtiofsd.log").open("w")
        with vfs_log:
            vfs = subprocess.Popen(
                [sys.executable, "-m", "vmtestbed.hostguest", "ro-exec", str(rodir), "--",
                 VIRTIOFSD, f"--socket-path={sock}", "-o", f"source={rodir}",
                 "-o", "sandbox=chroot", "-o", "cache=always", "-o", "no_posix_lock",
                 "-o", "log_level=warn", "-f"],
                stdin=subprocess.DEVNULL, stdout=vfs_log, stderr=subprocess.STDOUT,
                env=host.owned_env({"PYTHONPATH": str(paths.TESTBED_DIR)}),
                start_new_session=True,
            )
        pids.append(vfs.pid)
        _wait_socket(sock, vfs, job / "virtiofsd.log")
        qemu_argv = [
            QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(vcpus),
            *numa_args(numa_nodes, vcpus, memory_mib, numa_distance),
            "-chardev", f"socket,id=vfs,path={sock}",
            "-device", f"vhost-user-fs-pci,chardev=vfs,tag={TAG}",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            # softlockup_panic: a soft lockup, from the first moment of boot on, panics
            # (-> QEMU exits, -no-reboot) with the stuck task's stack on the console,
            # instead of the run hanging until the host-side timeout (the fixture then
            # runs once more). cryptomgr.notests: the crypto self-tests at boot, which
            # once hung a TCG vCPU (cryptomgr_test stuck for 600 s, CI-like run), as in
            # vmtestbed/ganeti_kvm.py.
            "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 softlockup_panic=1 "
                       f"cryptomgr.notests hpg.job={stage2}"
                       + (f" {kernel_args}" if kernel_args else ""),
            "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
            "-serial", f"file:{console}", "-nic", "none",
        ]
        qemu_log = (job / "qemu.log").open("w")
        with qemu_log:
            t_qemu = time.monotonic()
            qemu = subprocess.Popen(qemu_argv, stdin=subprocess.DEVNULL, stdout=qemu_log,
                                    stderr=subprocess.STDOUT, env=host.owned_env(),
                                    start_new_session=True)
        pids.append(qemu.pid)
        deadline = start + timeout
        host_to_command = -1.0
        text = ""
        while True:
            text = console.read_text(errors="replace") if console.exists() else ""
            text = text.replace("\r", "")
            if host_to_command < 0 and READY_RE.search(text):
                host_to_command = time.monotonic() - t_qemu
            if qemu.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"hostguest: no exit within {timeout:.0f}s; console tail:\n"
                                   + "\n".join(text.splitlines()[-30:]))
            time.sleep(0.2)
        total = time.monotonic() - start
        if keep_dir is not None:
            keep_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(console, keep_dir / "console.log")
        ready = READY_RE.search(text)
        end = EXIT_RE.search(text)
        errors = [m.group("what") for m in ERROR_RE.finditer(text)]
        if not end and LOCKUP_RE.search(text):
            raise GuestKernelLockup("\n".join(text.splitlines()[-80:]))
        if not ready or not end:
            qlog = (job / "qemu.log").read_text(errors="replace")
            vlog = (job / "virtiofsd.log").read_text(errors="replace")
            raise TestbedError(
                f"hostguest: command did not run to the end (QEMU exit {qemu.returncode}); "
                f"errors {errors}; console tail:\n" + "\n".join(text.splitlines()[-30:])
                + f"\nqemu: {qlog[-800:]}\nvirtiofsd: {vlog[-800:]}")
        return GuestRun(rc=int(end.group("rc")), output=text[ready.end() + 1:end.start()],
                        console=text, boot_to_command=float(ready.group("uptime")),
                        host_to_command=host_to_command, total=total, errors=errors)
    finally:
        for pid in reversed(pids):
            with contextlib.suppress(OSError, TestbedError):
                host.kill_owned(pid, timeout=5)
        shutil.rmtree(job, ignore_errors=True)


def kept_under_tmp(dirs: Sequence[Path]) -> list[str]:
    """The top directories under /tmp (``/tmp/<name>``) that hold ``dirs``: stage 2 keeps
    them visible through its fresh /tmp tmpfs."""
    keep = set()
    for d in dirs:
        parts = Path(os.path.realpath(d)).parts
        if len(parts) > 2 and parts[:2] == ("/", "tmp"):
            keep.add(str(Path(*parts[:3])))
    return sorted(keep)


def numa_args(nodes: int, vcpus: int, memory_mib: int, distance: int = 20) -> list[str]:
    """QEMU's ``-m``/``-object``/``-numa`` options: ``nodes`` NUMA nodes, each with its own
    shared memfd backend (virtiofs needs guest RAM shared with virtiofsd), ``vcpus`` and
    ``memory_mib`` split evenly, every pair of nodes ``distance`` apart (local is 10)."""
    if nodes < 1 or vcpus % nodes or memory_mib % nodes:
        raise TestbedError(f"hostguest: {vcpus} vCPUs and {memory_mib} MiB do not split "
                           f"evenly over {nodes} NUMA node(s)")
    if nodes == 1:
        mem = f"{memory_mib}M"
        return ["-m", mem, "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                "-numa", "node,memdev=mem"]
    per_cpu, per_mem = vcpus // nodes, memory_mib // nodes
    args = ["-m", f"{memory_mib}M"]
    for n in range(nodes):
        cpus = f"{n * per_cpu}-{(n + 1) * per_cpu - 1}" if per_cpu > 1 else str(n * per_cpu)
        args += ["-object", f"memory-backend-memfd,id=mem{n},size={per_mem}M,share=on",
                 "-numa", f"node,nodeid={n},cpus={cpus},memdev=mem{n}"]
    for a in range(nodes):
        for b in range(a + 1, nodes):
            args += ["-numa", f"dist,src={a},dst={b},val={distance}"]
    return args


def _wait_socket(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TestbedError(f"virtiofsd did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)


# -- helper process: exec a program in a private mount namespace that holds a
# read-only, non-recursive bind mount of / at a given directory -----------------
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 1
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def _ro_exec(target: str, argv: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    check(libc.mount(b"/", target.encode(), None, _MS_BIND, None), f"bind / on {target}")
    check(libc.mount(None, target.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None),
          f"remount {target} read-only")
    os.execv(argv[0], argv)  # noqa: S606 (argument list, no shell)


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[1] == "ro-exec" and sys.argv[3] == "--":
        _ro_exec(sys.argv[2], sys.argv[4:])
    sys.exit("usage: python -m vmtestbed.hostguest ro-exec DIR -- PROGRAM [ARGS...]")

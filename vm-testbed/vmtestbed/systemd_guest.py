"""A real Debian 12 system with systemd as PID 1, booted under QEMU, reached over SSH.

The disk is a raw ext4 image (:func:`vmtestbed.rootfs.build_ext4_image`) of a bookworm
rootfs made by mmdebstrap with systemd-sysv, openssh-server, python3 (for Ansible),
sudo, iproute2, iptables, nftables (``nftables.service`` enabled: it flushes the ruleset
at boot, what hookpack's units must be ordered after) and the Debian cloud kernel
``linux-image-cloud-amd64`` with its initramfs: QEMU boots that kernel and initrd
(``-kernel``/``-initrd``, taken from the rootfs) with ``root=/dev/vda``. Each guest
boots its own qcow2 overlay of the cached image; the image is never written.

One unit is baked in: ``hp-guest-setup.service`` reads from the kernel command line
``hp.ip=ADDR/LEN`` (address of eth0), ``hp.gw=ADDR`` and ``hp.sshkey=<base64 of an
ssh-ed25519 public key>`` (written to /root/.ssh/authorized_keys), before ssh.service
starts. So one cached image serves every guest, and each guest gets a fresh key.

Networking: :class:`SystemdGuest` creates a network namespace ``hpt-<pid>-<hex>-sys``
with a tap ``hpsys0`` (10.251.0.1/24); QEMU runs in that namespace (virtio-net on the
tap, virtio-blk on the overlay), and the host reaches the guest (10.251.0.2) with
``ssh`` run in the namespace (:meth:`SystemdGuest.ssh_argv`). Everything is removed by
:meth:`SystemdGuest.close` (QEMU by pid, the namespace, the work directory).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vmtestbed import host, rootfs
from vmtestbed.accel import accel_args
from vmtestbed.errors import TestbedError
from vmtestbed.guest import build_guest_image

SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "openssh-server", "python3", "python3-venv", "sudo",
    "iproute2", "iptables", "nftables", "kmod", "procps",
    "linux-image-cloud-amd64", "initramfs-tools",
    # no mirror in the guest: what apt brings for hookpack's .deb, what Ansible's apt
    # module needs
    "python3-pynetbox", "python3-apt",
)
HOSTNAME = "hpsys"
DOMAIN = "example.test"
FQDN = f"{HOSTNAME}.{DOMAIN}"
HOST_IP = "10.251.0.1"
GUEST_IP = "10.251.0.2"
PREFIXLEN = 24
TAP = "hpsys0"

SETUP_SCRIPT = r"""#!/bin/sh
# vmtestbed: address and root's ssh key from the kernel command line (systemd_guest.py).
set -u
ip=""; gw=""; key=""
for kv in $(cat /proc/cmdline); do
    case "$kv" in
        hp.ip=*) ip="${kv#hp.ip=}" ;;
        hp.gw=*) gw="${kv#hp.gw=}" ;;
        hp.sshkey=*) key="${kv#hp.sshkey=}" ;;
    esac
done
ip link set lo up
if [ -n "$ip" ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    ip addr replace "$ip" dev eth0
    ip link set eth0 up
    [ -n "$gw" ] && ip route replace default via "$gw"
fi
if [ -n "$key" ]; then
    install -d -m 0700 /root/.ssh
    echo "ssh-ed25519 $key vmtestbed" > /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
fi
echo "HP-GUEST-SETUP ip=$ip" > /dev/console
"""

SETUP_UNIT = """[Unit]
Description=vmtestbed: address and root ssh key from the kernel command line
Before=network.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /usr/local/sbin/hp-guest-setup

[Install]
WantedBy=multi-user.target
"""

FILES = {
    "/usr/local/sbin/hp-guest-setup": SETUP_SCRIPT,
    "/etc/systemd/system/hp-guest-setup.service": SETUP_UNIT,
    "/etc/hostname": f"{HOSTNAME}\n",
    "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {FQDN} {HOSTNAME}\n",
    "/etc/fstab": "/dev/vda / ext4 rw,noatime 0 0\n",
    # quiet boot on the serial console; sshd without DNS look-ups
    "/etc/ssh/sshd_config.d/vmtestbed.conf": "UseDNS no\nPermitRootLogin prohibit-password\n",
}
HOOKS = (
    'chroot "$1" systemctl enable hp-guest-setup.service nftables.service',
    # timers that would start work in the middle of a test under TCG
    'chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer '
    "fstrim.timer",
    # a fresh machine-id per boot (systemd writes one when the file is empty)
    'truncate -s 0 "$1/etc/machine-id"',
)


@dataclass(frozen=True)
class SystemdImage:
    rootfs: Path
    disk: Path
    boot: rootfs.BootFiles


def build_systemd_image() -> SystemdImage:
    """The cached bookworm rootfs, its ext4 image and its kernel (built on first use)."""
    tree = rootfs.build_rootfs(SUITE, PACKAGES, files=FILES, hooks=HOOKS)
    disk = rootfs.build_ext4_image(tree, free_mib=1024)
    return SystemdImage(rootfs=tree, disk=disk, boot=rootfs.boot_files(tree))


class SystemdGuest:
    """One QEMU guest running Debian 12 with systemd as PID 1; ``with`` closes it."""

    def __init__(self, image: SystemdImage, *, memory_mib: int = 1024, vcpus: int = 2) -> None:
        self.image = image
        self.memory_mib = memory_mib
        self.vcpus = vcpus
        self.netns = host.unique_name("sys")
        self.workdir: Path | None = None
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self.ip = GUEST_IP
        self.host_ip = HOST_IP

    def __enter__(self) -> SystemdGuest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- life cycle ---------------------------------------------------------
    def start(self, boot_timeout: float = 300.0) -> None:
        try:
            self._start(boot_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, boot_timeout: float) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.netns}-"))
        self.key = self.workdir / "id_ed25519"
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmtestbed",
                  "-f", str(self.key)])
        host.run(["ip", "netns", "add", self.netns])
        self._in_ns(["ip", "link", "set", "lo", "up"])
        self._in_ns(["ip", "tuntap", "add", TAP, "mode", "tap"])
        self._in_ns(["ip", "addr", "add", f"{HOST_IP}/{PREFIXLEN}", "dev", TAP])
        self._in_ns(["ip", "link", "set", TAP, "up"])
        overlay = rootfs.make_overlay(self.image.disk, self.workdir / "disk.qcow2")
        blob = self.key.with_suffix(".pub").read_text().split()[1]
        base64.b64decode(blob)  # a malformed key fails here, not as "ssh: permission denied"
        cmdline = (f"root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet "
                   f"hp.ip={GUEST_IP}/{PREFIXLEN} hp.gw={HOST_IP} hp.sshkey={blob}")
        argv = ["qemu-system-x86_64", "-name", self.netns, *accel_args(build_guest_image()),
                "-m", str(self.memory_mib), "-smp", str(self.vcpus),
                "-nodefaults", "-display", "none", "-no-user-config",
                "-kernel", str(self.image.boot.kernel), "-initrd", str(self.image.boot.initrd),
                "-append", cmdline,
                "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe",
                "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                "-device", "virtio-net-pci,netdev=n0",
                "-serial", f"file:{self.workdir / 'console.log'}",
                "-pidfile", str(self.workdir / "qemu.pid")]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(host.netns_argv(self.netns, argv), env=host.owned_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "qemu.stderr").open("wb"))
        self.pid = self.proc.pid
        self.wait_ssh(boot_timeout)
        self.boot_seconds = time.monotonic() - t0

    def close(self) -> None:
        """Stop QEMU (by pid), delete the namespace and the work directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.proc = None
        if Path(f"/run/netns/{self.netns}").exists():
            host.run(["ip", "netns", "delete", self.netns], check=False)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def console_log(self) -> str:
        if not self.workdir:
            return ""
        path = self.workdir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- talking to it --------------------------------------------------------
    def ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"]

    def ssh_argv(self, command: str) -> list[str]:
        """``ssh root@guest command`` as run on the host, inside the guest's namespace."""
        return host.netns_argv(self.netns, ["ssh", *self.ssh_options(), f"root@{self.ip}",
                                            command])

    def ssh(self, command: str, *, check: bool = True,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the guest as root; raise on failure when ``check``.

        A connection that failed before the command started (a slow sshd under TCG on a
        loaded host: refused, or no banner in time) is tried again, twice.
        """
        for _attempt in range(3):
            proc = subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, check=False)
            if proc.returncode != 255 or not any(
                    m in proc.stderr for m in ("banner exchange", "Connection refused",
                                               "Connection timed out")):
                break
        if check and proc.returncode != 0:
            raise TestbedError(f"guest {self.ip}: `{command}` exited {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc

    def out(self, command: str, timeout: float = 120.0) -> str:
        return self.ssh(command, timeout=timeout).stdout

    def wait_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TestbedError(f"QEMU exited {self.proc.returncode} during boot:\n"
                                   f"{self._diagnostics()}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if self.ssh("systemctl is-system-running --wait >/dev/null; true",
                            check=False, timeout=60).returncode == 0:
                    return
            time.sleep(0.5)
        raise TestbedError(f"guest {self.ip}: no ssh after {timeout:.0f} s:\n"
                           f"{self._diagnostics()}")

    def boot_id(self) -> str:
        return self.out("cat /proc/sys/kernel/random/boot_id").strip()

    def reboot(self, timeout: float = 300.0) -> float:
        """``systemctl reboot`` and wait until a new boot answers ssh; return the seconds."""
        before = self.boot_id()
        t0 = time.monotonic()
        self.ssh("systemctl reboot", check=False, timeout=30)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            self.wait_ssh(deadline - time.monotonic())
            with contextlib.suppress(TestbedError, subprocess.TimeoutExpired):
                if self.boot_id() != before:
                    return time.monotonic() - t0
            time.sleep(1)
        raise TestbedError(f"guest {self.ip}: did not come back from reboot in {timeout:.0f} s")

    def _in_ns(self, argv: list[str]) -> None:
        host.run(host.netns_argv(self.netns, argv))

    def _diagnostics(self) -> str:
        err = ""
        if self.workdir and (self.workdir / "qemu.stderr").exists():
            err = (self.workdir / "qemu.stderr").read_text(errors="replace")[-1500:]
        return f"qemu stderr: {err}\nconsole (tail):\n{self.console_log[-3000:]}"

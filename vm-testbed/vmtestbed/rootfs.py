"""Debian root filesystems made with Debian's own tools, and raw ext4 disk images of them.

``build_rootfs(suite, packages, variant=...)`` runs ``mmdebstrap`` (Debian package
``mmdebstrap``) into a temporary directory under the cache and renames the result into
``<cache>/rootfs/<key>``, where the key hashes the suite, the sorted package list, the
variant, the extra files and hooks, and :data:`BUILDER_VERSION`. The rename is the
commit: a directory under that name is always complete, and concurrent builders of the
same key race harmlessly (the loser throws its copy away). Callers must treat the
returned directory as read-only: copy it, or make an image of it.

``build_ext4_image(rootfs)`` turns such a directory into a raw ext4 filesystem image
with ``mke2fs -d`` (no mount, no loop device), cached and committed the same way under
``<cache>/rootfs/<key>.img/``. The image has no partition table: boot it with QEMU's
``-kernel``/``-initrd`` from :func:`boot_files` and ``root=/dev/vda``. Boot a qcow2
overlay on top of it (:func:`make_overlay`), never the cached file itself.

A cached rootfs is never refreshed: it holds the packages of the day it was built.
Bump :data:`BUILDER_VERSION` (or ``vm-testbed rootfs build --rebuild``) to rebuild.
``$VMTESTBED_DEBIAN_MIRROR`` overrides the mirror (not part of the key: every Debian
mirror serves the same archive).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmtestbed import paths
from vmtestbed.errors import TestbedError

# Bump when the way a rootfs or an image is made changes in a way the key does not see.
BUILDER_VERSION = "1"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "trixie")
VARIANTS = ("minbase", "essential", "required", "important", "standard", "apt")
BUILD_TIMEOUT = 1800.0


class RootfsBuildError(TestbedError):
    """A root filesystem or image could not be built (tool missing, mirror unreachable...)."""


@dataclass(frozen=True)
class BootFiles:
    """The kernel and initramfs a rootfs ships in /boot (package linux-image-*)."""

    kernel: Path
    initrd: Path
    version: str


def rootfs_key(suite: str, packages: Sequence[str] = (), variant: str = "minbase",
               files: Mapping[str, str] | None = None, hooks: Sequence[str] = ()) -> str:
    """The cache key of a rootfs: same inputs, same key; package order does not matter."""
    spec = {
        "builder": BUILDER_VERSION,
        "suite": suite,
        "variant": variant,
        "packages": sorted(set(packages)),
        "files": dict(sorted((files or {}).items())),
        "hooks": list(hooks),
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return f"{suite}-{variant}-{digest}"


def build_rootfs(suite: str = "bookworm", packages: Sequence[str] = (), *,
                 variant: str = "minbase", files: Mapping[str, str] | None = None,
                 hooks: Sequence[str] = (), cache_dir: Path | None = None,
                 rebuild: bool = False) -> Path:
    """A Debian ``suite`` root filesystem with ``packages``; built once, then cached.

    ``files`` maps absolute paths in the rootfs to their text (mode 0644, owner root),
    written before ``hooks`` run; ``hooks`` are mmdebstrap ``--customize-hook`` commands
    (``$1`` is the rootfs), e.g. ``'chroot "$1" systemctl enable foo.service'``.
    """
    if suite not in SUITES:
        raise RootfsBuildError(f"suite {suite!r}: supported are {', '.join(SUITES)}")
    if variant not in VARIANTS:
        raise RootfsBuildError(f"variant {variant!r}: supported are {', '.join(VARIANTS)}")
    for path in files or {}:
        if not path.startswith("/") or ".." in path.split("/"):
            raise RootfsBuildError(f"rootfs file {path!r}: give an absolute path without '..'")
    cache = (cache_dir or paths.cache_dir()) / "rootfs"
    out = cache / rootfs_key(suite, packages, variant, files, hooks)
    if out.is_dir() and not rebuild:
        return out
    with paths.build_lock(out):
        if not out.is_dir() or rebuild:
            _mmdebstrap(suite, packages, variant, files or {}, hooks, out, rebuild=rebuild)
    return out


def _mmdebstrap(suite: str, packages: Sequence[str], variant: str, files: Mapping[str, str],
                hooks: Sequence[str], out: Path, *, rebuild: bool) -> None:
    cache = out.parent
    tool = _require("mmdebstrap", "mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix=f".build-{os.getpid()}-"))
    try:
        staged = work / "files"
        argv = [str(tool), f"--variant={variant}", "--mode=root", "--quiet",
                "--aptopt=Acquire::Retries \"3\""]
        if packages:
            argv.append("--include=" + ",".join(sorted(set(packages))))
        argv += _file_hooks(files, staged)
        argv += [f"--customize-hook={h}" for h in hooks]
        # apt's lists and downloaded .debs are dead weight in a cached image.
        argv += ["--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin"]
        mirror = os.environ.get("VMTESTBED_DEBIAN_MIRROR", DEFAULT_MIRROR)
        argv += [suite, str(work / "root"), mirror]
        _run(argv, f"mmdebstrap {suite} ({variant})")
        _commit(work / "root", out, replace=rebuild)
    finally:
        _remove_tree(work)


def build_ext4_image(rootfs: Path, *, free_mib: int = 1024,
                     cache_dir: Path | None = None) -> Path:
    """A raw ext4 image of ``rootfs`` (made by :func:`build_rootfs`) with ``free_mib`` free.

    Cached as ``<cache>/rootfs/<rootfs key>-<free>.img/disk.img``, keyed by the rootfs
    directory's name (itself a content key), ``free_mib`` and :data:`BUILDER_VERSION`.
    """
    rootfs = rootfs.resolve()
    if not (rootfs / "etc/os-release").exists():
        raise RootfsBuildError(f"{rootfs}: not a root filesystem (no etc/os-release)")
    cache = (cache_dir or paths.cache_dir()) / "rootfs"
    out = cache / f"{rootfs.name}-{free_mib}m-v{BUILDER_VERSION}.img"
    image = out / "disk.img"
    if image.exists():
        return image
    with paths.build_lock(out):
        if not image.exists():
            _mke2fs(rootfs, free_mib, out)
    return image


def _mke2fs(rootfs: Path, free_mib: int, out: Path) -> None:
    mke2fs = _require("mke2fs", "e2fsprogs")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".build-{os.getpid()}-"))
    try:
        result = work / "result"
        result.mkdir()
        size_mib = _tree_mib(rootfs) + free_mib
        _run([str(mke2fs), "-q", "-F", "-t", "ext4", "-L", "root", "-E", "root_owner=0:0",
              "-d", str(rootfs), str(result / "disk.img"), f"{size_mib}M"],
             f"mke2fs -d {rootfs}")
        _commit(result, out, replace=False)
    finally:
        _remove_tree(work)


def boot_files(rootfs: Path) -> BootFiles:
    """The newest kernel and initrd in ``rootfs``/boot (install a linux-image-* package)."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    for kernel in reversed(kernels):
        version = kernel.name.removeprefix("vmlinuz-")
        initrd = rootfs / "boot" / f"initrd.img-{version}"
        if initrd.exists():
            return BootFiles(kernel=kernel, initrd=initrd, version=version)
    raise RootfsBuildError(
        f"{rootfs}/boot has no vmlinuz-* with its initrd.img-*: build the rootfs with "
        "linux-image-cloud-amd64 (or linux-image-amd64) and initramfs-tools")


def make_overlay(image: Path, overlay: Path) -> Path:
    """A qcow2 file at ``overlay`` whose writes leave the cached raw ``image`` untouched."""
    _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image),
          str(overlay)], f"qemu-img create overlay of {image}")
    return overlay


def _file_hooks(files: Mapping[str, str], staged: Path) -> list[str]:
    """mmdebstrap hooks that upload each file (written to ``staged`` first) into the rootfs."""
    hooks = []
    staged.mkdir(parents=True, exist_ok=True)
    for i, (dest, text) in enumerate(sorted(files.items())):
        src = staged / f"{i:04d}"
        src.write_text(text)
        parent = os.path.dirname(dest)
        hooks.append(f'--customize-hook=mkdir -p "$1{parent}"')
        hooks.append(f"--customize-hook=upload {src} {dest}")
        hooks.append(f'--customize-hook=chmod 0644 "$1{dest}"')
    return hooks


def _commit(built: Path, out: Path, *, replace: bool) -> None:
    """Rename ``built`` to ``out``; if another builder committed first, keep theirs."""
    if replace and out.exists():
        old = out.with_name(f".old-{os.getpid()}-{out.name}")
        out.rename(old)
        _remove_tree(old)
    try:
        built.rename(out)
    except OSError:
        if not out.is_dir():
            raise
        # another builder won the race; its result is built from the same inputs


def _remove_tree(path: Path) -> None:
    """rm -rf ``path``, but never through a mount point (a failed build's /proc or /dev)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    if mounted:
        raise RootfsBuildError(
            f"{path}: still has mounts ({', '.join(mounted)}); unmount them, then remove it")
    shutil.rmtree(path, ignore_errors=True)


def _tree_mib(root: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1M", str(root)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def _require(program: str, package: str) -> Path:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        raise RootfsBuildError(f"{program} not found: install the Debian package {package} "
                               "(scripts/setup does)")
    return Path(found)


def _run(argv: list[str], what: str) -> None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise RootfsBuildError(f"{what}: no result after {BUILD_TIMEOUT:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RootfsBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _version_key(name: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", name)]

"""Debian's cloud kernel for the guests, taken from its .deb without installing it.

The guests (:mod:`vmtestbed.guest`, :mod:`vmtestbed.hostguest`) boot Debian 12's
``linux-image-cloud-amd64`` kernel. Installing that package would change the host: a
new kernel in /boot may become the default boot entry. Instead, :func:`stock_kernel`
downloads the package with ``apt-get download`` (the meta package, then the versioned
image package it depends on), unpacks it with ``dpkg-deb -x`` into
``<cache>/kernel/<version>/`` and runs ``depmod -b`` there (the package's postinst would
have), so the tree holds ``boot/vmlinuz-<version>`` and ``lib/modules/<version>/`` with
``modules.dep``. The unpacked tree is renamed into place (atomic: concurrent fetchers
race harmlessly) and never changes afterwards; the newest version in the cache is used.
Needs apt's package lists (``apt-get update``, which scripts/setup runs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmtestbed import paths
from vmtestbed.errors import TestbedError

META_PACKAGE = "linux-image-cloud-amd64"
FLAVOUR_SUFFIX = "-cloud-amd64"


class KernelFetchError(TestbedError):
    """The kernel package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class StockKernel:
    version: str
    root: Path  # the unpacked package: boot/ and lib/modules/ below it

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def stock_kernel(cache_dir: Path | None = None) -> StockKernel:
    """The newest unpacked cloud kernel in the cache; downloaded and unpacked if none."""
    cache = (cache_dir or paths.cache_dir()) / "kernel"
    found = cached_kernels(cache)
    if found:
        return found[-1]
    return fetch_stock_kernel(cache)


def cached_kernels(cache: Path) -> list[StockKernel]:
    kernels = []
    if cache.is_dir():
        for d in cache.iterdir():
            if d.name.startswith(".") or not d.name.endswith(FLAVOUR_SUFFIX):
                continue
            kernel = StockKernel(d.name, d)
            if kernel.vmlinuz.exists() and (kernel.modules_dir / "modules.dep").exists():
                kernels.append(kernel)
    return sorted(kernels, key=lambda k: _version_key(k.version))


def fetch_stock_kernel(cache: Path) -> StockKernel:
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".fetch-{os.getpid()}-") as tmp:
        work = Path(tmp)
        meta = _download(META_PACKAGE, work)
        depends = _run(["dpkg-deb", "-f", str(meta), "Depends"], "read its Depends").strip()
        match = re.search(r"(linux-image-[0-9][^\s,(]*" + re.escape(FLAVOUR_SUFFIX) + r")",
                          depends)
        if not match:
            raise KernelFetchError(f"{META_PACKAGE} depends on no kernel image: {depends!r}")
        image = _download(match.group(1), work)
        root = work / "root"
        _run(["dpkg-deb", "-x", str(image), str(root)], f"dpkg-deb -x {image.name}")
        versions = [p.name for p in (root / "lib" / "modules").iterdir()]
        if len(versions) != 1:
            raise KernelFetchError(f"{image.name}: expected one lib/modules/<version>, "
                                   f"found {versions}")
        version = versions[0]
        _run([_depmod(), "-b", str(root), version], f"depmod -b {root} {version}")
        kernel = StockKernel(version, root)
        if not kernel.vmlinuz.exists():
            raise KernelFetchError(f"{image.name} has no boot/vmlinuz-{version}")
        out = cache / version
        try:
            root.rename(out)
        except OSError:
            if not out.is_dir():
                raise
            # another fetcher committed the same version first
    return StockKernel(version, out)


def _download(package: str, where: Path) -> Path:
    # As root, apt hands the download to its sandbox user; the scratch dir is root's.
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
         f"apt-get download {package}", cwd=where)
    debs = sorted(where.glob(f"{package}_*.deb"))
    if not debs:
        raise KernelFetchError(f"apt-get download {package}: no .deb in {where}")
    return debs[-1]


def _depmod() -> str:
    found = shutil.which("depmod") or shutil.which("depmod", path="/usr/sbin:/sbin")
    if not found:
        raise KernelFetchError("depmod not found: install the Debian package kmod")
    return found


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=900,
                          check=False)
    if proc.returncode != 0:
        hint = " (run `apt-get update` first; scripts/setup does)" \
            if argv[0] == "apt-get" else ""
        raise KernelFetchError(f"{what} failed (exit {proc.returncode}){hint}: "
                               f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def _version_key(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", version)]


if __name__ == "__main__":
    k = stock_kernel()
    print(f"kernel {k.version}: {k.vmlinuz}, modules {k.modules_dir}")

"""The Debian 13 tree a Ganeti 3.1 lab node runs in.

Debian 13 ("trixie") ships Ganeti 3.1 and QEMU 10; this host is Debian 12. The tree is
a :func:`vmtestbed.rootfs.build_rootfs` root filesystem with those packages, built once
and cached. Every node mounts an overlay of it (the cache read-only below, the node's
own directory above) and chroots its holder process into it (:mod:`vmtestbed.ganeti.node`),
so the nodes share nothing written.
"""

from __future__ import annotations

from pathlib import Path

from vmtestbed import rootfs
from vmtestbed.ganeti import packages

SUITE = "trixie"
# What a 3.0 lab installs on this host, plus what this host has and a minbase tree has
# not: hookpack's venv (python3-venv) and the host tools its actions call.
PACKAGES = (*packages.PACKAGES,
            "python3-venv", "nftables", "iptables", "iproute2", "procps", "kmod")


def build_tree(cache_dir: Path | None = None) -> Path:
    """The cached Debian 13 tree with Ganeti 3.1 (built on first use: a minute or two)."""
    return rootfs.build_rootfs(SUITE, PACKAGES, variant="minbase", cache_dir=cache_dir)


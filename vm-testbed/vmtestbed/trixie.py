"""The one Debian 13 ("trixie") tree: what a Ganeti 3.1 lab node runs in and what NetBox
runs from.

This host is Debian 12. Ganeti 3.1, QEMU 10 and Python 3.13 (NetBox 4.7 needs 3.12 or
later) are Debian 13's. One :func:`vmtestbed.rootfs.build_rootfs` tree holds both package
sets, built once and cached: every lab node mounts an overlay of it
(:mod:`vmtestbed.ganeti.node`), and NetBox's build copies it and adds its venv and
database (:mod:`vmtestbed.netbox`). Neither starts the other's daemons: the lab's nodes
run no init, NetBox starts only its own.
"""

from __future__ import annotations

from pathlib import Path

from vmtestbed import rootfs
from vmtestbed.ganeti import packages

SUITE = "trixie"
VARIANT = "minbase"
# What a 3.0 lab installs on this host, plus what this host has and a minbase tree has
# not: hookpack's venv (python3-venv) and the host tools its actions call.
GANETI_PACKAGES = (*packages.PACKAGES,
                   "python3-venv", "nftables", "iptables", "iproute2", "procps", "kmod")
NETBOX_PACKAGES = (
    "python3", "python3-venv",
    # psycopg[c]: compiled at pip install time against libpq
    "python3-dev", "gcc", "libc6-dev", "libpq-dev",
    "postgresql", "redis-server",
)
PACKAGES = tuple(sorted(set(GANETI_PACKAGES + NETBOX_PACKAGES)))


def build_tree(cache_dir: Path | None = None) -> Path:
    """The cached Debian 13 tree (built on first use: a minute or two)."""
    return rootfs.build_rootfs(SUITE, PACKAGES, variant=VARIANT, cache_dir=cache_dir)

"""Names, addresses and paths of the lab: one place, so ``down`` finds what ``up`` made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_DIR = Path("/var/lib/vmtestbed-lab")
DOMAIN = "example.test"
CLUSTER_NAME = f"cluster1.{DOMAIN}"
NET_PREFIX = "198.51.100"  # RFC 5737 documentation range, only on interfaces we create
CLUSTER_IP = f"{NET_PREFIX}.100"
SWITCH = "gntsw0"  # bridge in the root namespace: the switch between the nodes
HOSTS_TAG = "# vmtestbed-lab"  # marks our /etc/hosts lines
MAX_NODES = 4

# Ganeti versions the lab builds: 3.0 from this Debian 12 host's packages, 3.1 from a
# Debian 13 root filesystem each node chroots into (vmtestbed.trixie).
VERSIONS = ("3.0", "3.1")
DEFAULT_VERSION = "3.0"

# Directories each node gets a private copy of (bind mounts inside its mount namespace).
# key: directory on the node; value: name of the per-node source directory.
PRIVATE_DIRS = {
    "/var/lib/ganeti": "var-lib-ganeti",
    "/etc/ganeti": "etc-ganeti",
    "/var/log/ganeti": "var-log-ganeti",
    "/root/.ssh": "root-ssh",
    "/etc/ssh": "etc-ssh",
    "/srv/ganeti": "srv-ganeti",
    "/etc/hookpack": "etc-hookpack",
    "/var/lib/hookpack": "var-lib-hookpack",
    "/var/spool/hookpack": "var-spool-hookpack",
    "/var/log/hookpack": "var-log-hookpack",
}
# Directories seeded from the host's copy (packaged content) rather than created empty.
SEEDED_DIRS = ("/etc/ganeti", "/etc/ssh", "/var/lib/ganeti")

FILE_STORAGE = "/srv/ganeti/file-storage"
SHARED_FILE_STORAGE = "/srv/ganeti/shared-file-storage"
OS_DIR = "/srv/ganeti/os"


@dataclass(frozen=True)
class NodeSpec:
    """Static facts about lab node ``index`` (1-based)."""

    index: int

    @property
    def name(self) -> str:
        return f"node{self.index}.{DOMAIN}"

    @property
    def short(self) -> str:
        return f"node{self.index}"

    @property
    def ip(self) -> str:
        return f"{NET_PREFIX}.{self.index}"

    @property
    def netns(self) -> str:
        return f"gntlab{self.index}"

    @property
    def veth_host(self) -> str:
        return f"gntlab{self.index}h"

    @property
    def veth_node(self) -> str:
        return f"gntlab{self.index}n"

    @property
    def state_dir(self) -> Path:
        return STATE_DIR / "nodes" / self.short

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "holder.pid"

    @property
    def root(self) -> Path:
        """Where a chrooted node's overlay root is mounted (inside its mount namespace)."""
        return self.state_dir / "root"


def instance_name(index: int) -> str:
    return f"inst{index}.{DOMAIN}"


def instance_ip(index: int) -> str:
    return f"{NET_PREFIX}.{20 + index}"

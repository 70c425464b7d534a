"""Which part this node plays in the operation a hook runs for.

Ganeti has no "this node" variable: a hook compares the node's FQDN with the names in
its environment (shared/reference/ganeti-hooks.md). Roles come from the
pre-operation values; source and target of a migrate/failover come from
OLD_PRIMARY/NEW_PRIMARY, never from GANETI_POST_INSTANCE_PRIMARY (already the new
node in a migrate post hook). Works on raw values so the hook's quick gate can use it
without parsing the whole environment.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hookpack.env import HookEnv


class Role(StrEnum):
    MASTER = "master"
    PRIMARY = "primary"  # the instance's primary before the operation
    SECONDARY = "secondary"
    SOURCE = "source"  # migrate/failover/move: where the instance leaves from
    TARGET = "target"  # migrate/failover/move: where it goes
    HOST = "host"  # runs (or holds) the instance once the operation is done
    OTHER = "other"  # none of the above (e.g. a node of the group in cluster-verify)


def system_fqdn() -> str:
    """The node's FQDN as Ganeti sees it (socket.getfqdn, like Ganeti's netutils)."""
    name = socket.gethostname()
    return name if "." in name else socket.getfqdn(name)


def normalize_host(name: str) -> str:
    """Host names compare case-insensitively and without a trailing dot."""
    return name.strip().rstrip(".").lower()


def relocation_nodes(values: Mapping[str, str], hpath: str) -> tuple[str, str, str] | None:
    """(kind, source, target) of a migrate/failover/move from the pre values."""
    if hpath in ("instance-migrate", "instance-failover"):
        kind = "migrate" if hpath == "instance-migrate" else "failover"
        return (kind, normalize_host(values.get("OLD_PRIMARY", "")),
                normalize_host(values.get("NEW_PRIMARY", "")))
    if hpath == "instance-move":
        return ("move", normalize_host(values.get("INSTANCE_PRIMARY", "")),
                normalize_host(values.get("TARGET_NODE", "")))
    return None


def roles_from_values(values: Mapping[str, str], hpath: str, phase: str,
                      fqdn: str) -> frozenset[Role]:
    """Roles from the GANETI_* values (prefix removed) of a hook environment."""
    me = normalize_host(fqdn)
    roles: set[Role] = set()
    if me and me == normalize_host(values.get("MASTER", "")):
        roles.add(Role.MASTER)
    has_instance = "INSTANCE_NAME" in values
    primary = normalize_host(values.get("INSTANCE_PRIMARY", ""))
    if me and has_instance:
        if me == primary:
            roles.add(Role.PRIMARY)
        if me in {normalize_host(s) for s in values.get("INSTANCE_SECONDARIES", "").split()}:
            roles.add(Role.SECONDARY)
    moved = relocation_nodes(values, hpath)
    if me and moved is not None:
        _, source, target = moved
        if me == source:
            roles.add(Role.SOURCE)
        if me == target:
            roles.add(Role.TARGET)
    host = moved[2] if moved is not None and phase == "post" and moved[2] else primary
    if me and has_instance and me == host:
        roles.add(Role.HOST)
    return frozenset(roles or {Role.OTHER})


def resolve_roles(env: HookEnv, fqdn: str) -> frozenset[Role]:
    phase = env.phase.value if env.phase else ""
    return roles_from_values(env.pre.values, env.hpath, phase, fqdn)


def roles_from_environ(environ: Mapping[str, str], fqdn: str) -> frozenset[Role]:
    values = {k[7:]: v for k, v in environ.items()
              if k.startswith("GANETI_") and not k.startswith("GANETI_POST_")}
    return roles_from_values(values, values.get("HOOKS_PATH", ""),
                             values.get("HOOKS_PHASE", "").strip().lower(), fqdn)

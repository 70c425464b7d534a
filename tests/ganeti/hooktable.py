"""Which nodes run an instance operation's hooks, per phase: the table of
shared/reference/ganeti-hooks.md ("Which directory and which nodes"), as code.

For the lab's instances: no secondaries (file/sharedfile templates).
"""

from __future__ import annotations


def expected_nodes(hpath: str, *, master: str, primary: str, target: str | None = None,
                   secondaries: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """``{"pre": {nodes}, "post": {nodes}}`` for an operation on an instance whose
    primary is ``primary`` (before the operation) and, for migrate/failover/move, goes
    to ``target``."""
    instance_nodes = {primary, *secondaries}
    if hpath in ("instance-add", "instance-start", "instance-stop", "instance-reboot",
                 "instance-modify", "instance-rename", "disk-grow"):
        both = {master, *instance_nodes}
        return {"pre": both, "post": set(both)}
    if hpath == "instance-migrate":
        assert target
        both = {master, *instance_nodes, target}
        return {"pre": both, "post": set(both)}
    if hpath == "instance-failover":
        assert target
        pre = {master, *secondaries, target}
        return {"pre": pre, "post": pre | {primary}}  # post: also the old primary
    if hpath == "instance-move":
        assert target
        both = {master, primary, target}
        return {"pre": both, "post": set(both)}
    if hpath == "instance-remove":
        return {"pre": {master}, "post": {master, *instance_nodes}}
    raise KeyError(f"no expectation for {hpath}")


def expected_roles(node: str, *, hpath: str, phase: str, master: str, primary: str,
                   target: str | None = None) -> set[str]:
    """Roles hookpack must at least report on ``node`` (not the whole set: ``host``
    and the like are hookpack's own derivations, tested in its unit tests)."""
    roles = set()
    if node == master:
        roles.add("master")
    if node == primary:
        roles.add("primary")
    if target and hpath in ("instance-migrate", "instance-failover", "instance-move"):
        if node == primary:
            roles.add("source")
        if node == target:
            roles.add("target")
    del phase
    return roles

"""`hookpack netbox sync [INSTANCE|--all] [--dry-run]`: bring NetBox in step with Ganeti.

For what the hooks could not do (a post hook that failed, NetBox down at the time, a
start or stop, which runs no netbox hook): reads the instances from Ganeti
(`gnt-instance list`, so on the master) and reconciles each one's VM as the action
does. With ``--all`` it also deletes hookpack's VMs of the cluster that Ganeti no
longer has; VMs hookpack did not create are only marked offline, never deleted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hookpack.action import NoRedact
from hookpack.actions.netbox.client import (
    TAG,
    Writes,
    connect,
    find_cluster,
    listed,
)
from hookpack.actions.netbox.reconcile import NicSpec, VmSpec, is_up, reconcile, remove

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

FIELDS = ["name", "admin_state", "be/vcpus", "be/maxmem", "disk.sizes", "nic.macs", "nic.ips"]


def ganeti_specs() -> dict[str, VmSpec]:
    """Instance name -> what NetBox should hold for it, from Ganeti."""
    from hookpack.gntlist import instance_rows

    return {row[0]: spec_of_row(row) for row in instance_rows(FIELDS)}


def spec_of_row(row: list[str]) -> VmSpec:
    name, state, vcpus, maxmem, disks, macs, ips = row
    mac_list, ip_list = _items(macs), _items(ips)
    nics = tuple(NicSpec(i, (mac_list[i] or "").upper() or None,
                         ip_list[i] if i < len(ip_list) else None)
                 for i in range(len(mac_list)))
    sizes = [_number(s) for s in _items(disks)]
    return VmSpec(name=name, vcpus=_number(vcpus), memory=_number(maxmem),
                  disk_mib=sum(s for s in sizes if s is not None) if sizes else None,
                  up=is_up(state), nics=nics)


def _items(field: str) -> list[str | None]:
    return [None if item.strip() in ("", "-", "None") else item.strip()
            for item in field.split(",")] if field.strip() not in ("", "-") else []


def _number(text: str | None) -> int | None:
    try:
        return int(float(text or ""))
    except ValueError:
        return None


def sync(w: Writes, settings: Mapping[str, Any], specs: Mapping[str, VmSpec],
         cluster_id: int, only: str | None) -> list[str]:
    """Reconcile ``only`` or every instance; with neither, also drop hookpack's VMs that
    Ganeti no longer has. Returns the problems."""
    problems: list[str] = []
    for name in [only] if only else sorted(specs):
        spec = specs.get(name)
        if spec is None:
            remove(w, name, cluster_id)
        else:
            problems += reconcile(w, settings, spec, cluster_id)
    if only is None:
        for vm in listed("VM lookup", w.api.virtualization.virtual_machines,
                         cluster_id=cluster_id, tag=TAG):
            if vm.name not in specs:
                remove(w, vm.name, cluster_id)
    return problems


def add_cli(netbox: Any) -> None:
    from hookpack.gntlist import add_sync_parser

    add_sync_parser(netbox, "NetBox", "delete hookpack's VMs of instances that are gone",
                    cmd_sync)


def cmd_sync(ns: argparse.Namespace) -> int:
    from hookpack.actions.netbox.action import SETTINGS, cluster_name, ganeti_cluster
    from hookpack.config import load
    from hookpack.gntlist import sync_target

    only = sync_target(ns)
    cfg = load(ns)
    settings = cfg.section("netbox", SETTINGS)
    specs = ganeti_specs()
    api = connect(settings, NoRedact(), float(settings["timeout"]))
    cluster = cluster_name(settings, ganeti_cluster(cfg))
    w = Writes(api, dry_run=ns.dry_run)
    problems = sync(w, settings, specs, find_cluster(api, cluster), only)
    scope = only or f"{len(specs)} instance(s)"
    if ns.json:
        print(json.dumps({"scope": scope, "cluster": cluster, "dry_run": ns.dry_run,
                          "would_change" if ns.dry_run else "changed": w.lines,
                          "problems": problems}, sort_keys=True))
        return 1 if problems else 0
    verb = "would  " if ns.dry_run else "changed"
    for line in w.lines:
        print(f"{verb} {line}")
    for problem in problems:
        print(f"problem {problem}")
    print(f"netbox sync: {scope} in cluster {cluster!r}: "
          f"{'would change' if ns.dry_run else 'changed'} {len(w.lines)} object(s), "
          f"{len(problems)} problem(s){' (dry run: nothing applied)' if ns.dry_run else ''}")
    return 1 if problems else 0

"""`hookpack dns sync [INSTANCE|--all] [--dry-run]`: bring PowerDNS in step with Ganeti.

For what the hooks could not do (a post hook that failed, PowerDNS down at the time):
reads the instances and their NIC addresses from Ganeti (`gnt-instance list`, so on
the master), computes each one's A/AAAA and PTR RRsets as the dns action would, and
also removes what hookpack's marks say it wrote for addresses or instances that are
gone. Records without hookpack's mark are never changed (a conflict is reported).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hookpack.actions.dns.action import (
    SETTINGS,
    Plan,
    choose_marks,
    fqdn,
    make_client,
    make_plan,
    marks_note,
    owner_name,
    ptr_name,
    valid_addresses,
    zone_for,
)
from hookpack.errors import ActionError

if TYPE_CHECKING:
    import argparse

    from hookpack.adapters.powerdns import Client, RRset

def ganeti_instances(run: Callable[..., Any] = subprocess.run) -> dict[str, list[str]]:
    """Instance name -> its valid NIC addresses, in NIC order, from Ganeti."""
    from hookpack.gntlist import instance_rows

    return instances_of(instance_rows(["name", "nic.ips"], run))


def parse_instance_list(text: str) -> dict[str, list[str]]:
    from hookpack.gntlist import split_rows

    return instances_of(split_rows(text, 2))


def instances_of(rows: list[list[str]]) -> dict[str, list[str]]:
    instances: dict[str, list[str]] = {}
    for name, field in rows:
        instances[owner_name(name)] = valid_addresses(field.split(","))
    return instances


def wanted(rrset: RRset, owner: str, ips: list[str] | None) -> bool:
    """Whether the instance ``owner`` (addresses ``ips``, None: gone) wants ``rrset``."""
    if ips is None:
        return False
    if rrset.type in ("A", "AAAA"):
        kind = "AAAA" if rrset.type == "AAAA" else "A"
        return rrset.name.lower() == fqdn(owner) and any(
            ("AAAA" if ":" in ip else "A") == kind for ip in ips)
    if rrset.type == "PTR":
        return rrset.name.lower() in {ptr_name(ip) for ip in ips}
    return True


def sync_plan(client: Client, settings: Mapping[str, Any], instances: Mapping[str, list[str]],
              only: str | None, timeout: float) -> Plan:
    """The changes that bring PowerDNS in step with ``instances`` (or only ``only``)."""
    from hookpack.adapters.powerdns import MANAGED_TYPES, Change

    plan = Plan()
    keys: set[tuple[str, str]] = set()

    def take(sub: Plan) -> None:
        for changes in sub.changes.values():
            for change in changes:
                if (change.name, change.type) not in keys:
                    keys.add((change.name, change.type))
                    plan.add(change)
        plan.conflicts += [c for c in sub.conflicts if c not in plan.conflicts]

    targets = {only: instances.get(only)} if only else dict(instances)
    for name, ips in sorted(targets.items()):
        if ips is not None:
            take(make_plan(client, settings, name, name, [], ips, lambda: timeout))
    stale = Plan()
    for zone in [*settings["forward_zones"], *settings["reverse_zones"]]:
        for rrset in client.zone_rrsets(fqdn(zone), timeout):
            owner = rrset.owner()
            if owner is None or rrset.type not in MANAGED_TYPES:
                continue
            owner = owner_name(owner)
            if only and owner != only:
                continue
            if not wanted(rrset, owner, instances.get(owner)):
                stale.add(Change(zone_for(rrset.name, [zone]) or fqdn(zone), rrset.name,
                                 rrset.type, "DELETE"))
    take(stale)
    return plan


def add_cli(dns: Any) -> None:
    from hookpack.gntlist import add_sync_parser

    add_sync_parser(dns, "PowerDNS", "remove hookpack's records of instances that are gone",
                    cmd_sync)


def cmd_sync(ns: argparse.Namespace) -> int:
    from hookpack.action import NoRedact
    from hookpack.config import load
    from hookpack.gntlist import sync_target

    target = sync_target(ns)
    settings = load(ns).section("dns", SETTINGS)
    if not settings["forward_zones"] and not settings["reverse_zones"]:
        raise ActionError("dns: no forward_zones or reverse_zones configured")
    only = owner_name(target) if target else None
    instances = ganeti_instances()
    client = make_client(settings, NoRedact())
    timeout = float(settings["timeout"])
    choose_marks(client, settings, timeout)
    as_json = getattr(ns, "json", False)
    if not as_json:
        print(f"dns sync: {marks_note(client)}")
        if only and only not in instances:
            print(f"dns sync: {only} is not an instance of this cluster: its records go")
    plan = sync_plan(client, settings, instances, only, timeout)
    return report(plan, client, dry_run=ns.dry_run, timeout=timeout,
                  scope=only or f"{len(instances)} instance(s)", as_json=as_json)


def report(plan: Plan, client: Client, *, dry_run: bool, timeout: float, scope: str,
           as_json: bool = False) -> int:
    changes = [c for zone in plan.changes.values() for c in zone]
    done: list[str] = [] if dry_run else plan.apply(client, lambda: timeout)
    if as_json:
        print(json.dumps({"scope": scope, "dry_run": dry_run, "records": marks_note(client),
                          "would_change" if dry_run else "changed":
                          [c.describe() for c in changes] if dry_run else done,
                          "conflicts": list(plan.conflicts)}, sort_keys=True))
        return 1 if plan.conflicts else 0
    for change in changes if dry_run else ():
        print(f"would   {change.describe()}")
    for line in done:
        print(f"changed {line}")
    for conflict in plan.conflicts:
        print(f"conflict {conflict}")
    verb = "would change" if dry_run else "changed"
    print(f"dns sync: {scope}: {verb} {len(changes)} RRset(s), {len(plan.conflicts)} "
          f"conflict(s){' (dry run: nothing applied)' if dry_run else ''}")
    return 1 if plan.conflicts else 0

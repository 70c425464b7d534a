"""Keep PowerDNS A/AAAA and PTR records in step with each instance's NIC IPs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext, NoRedact, Redactor
from hookpack.config import Field, add_config_arg
from hookpack.errors import ActionError, ConfigError
from hookpack.record import field, record
from hookpack.result import Outcome, Result

if TYPE_CHECKING:  # typing only: the adapter imports http.client, kept off the hot path
    import argparse

    from hookpack.adapters.powerdns import Change, Client, RRset
    from hookpack.env import Instance

SETTINGS = {
    "api_url": Field(str, "http://127.0.0.1:8081", "Base URL of the PowerDNS Authoritative "
                     "HTTP API (the webserver with api=yes).", pattern=r"https?://\S+"),
    "server_id": Field(str, "localhost", "PowerDNS server id in the API path."),
    "api_key_file": Field(str, "/etc/hookpack/powerdns-api-key", "Root-only file holding "
                          "the API key (sent as X-API-Key)."),
    "forward_zones": Field(list, [], "Zones that hold instance names (A/AAAA). An instance "
                           "name outside all of them gets no forward records.",
                           item_type=str),
    "reverse_zones": Field(list, [], "in-addr.arpa / ip6.arpa zones hookpack keeps PTR "
                           "records in. An address outside all of them gets no PTR.",
                           item_type=str),
    "ttl": Field(int, 300, "TTL of the records hookpack writes, in seconds.", minimum=1,
                 maximum=604800),
    "timeout": Field(float, 2.0, "Timeout of one API request, in seconds (further bounded "
                     "by the hook's deadline).", minimum=0.1, maximum=30),
    "owner_marks": Field(str, "auto", "How hookpack marks the RRsets it owns: `comments` "
                         "(an RRset comment; generic SQL backends), `txt` (a TXT record at "
                         "`_hookpack.<name>`; for backends without comments, e.g. LMDB), "
                         "`auto` (ask the server which backends it launched).",
                         choices=("auto", "comments", "txt")),
}

# Seconds kept back from the hook's deadline so a slow API never eats the last of it.
DEADLINE_MARGIN = 0.5


def run(ctx: ActionContext) -> Result:
    old, new = _names(ctx)
    if not old and not new:
        return Result.skipped("no instance name in the environment")
    settings = ctx.settings
    before = ctx.env.instance
    after = ctx.env.instance_after or before
    hpath = ctx.env.hpath
    if hpath == "instance-add":
        old_ips, new_ips, old = [], instance_ips(after), None
    elif hpath == "instance-remove":
        old_ips, new_ips, new = instance_ips(before), [], None
    else:  # modify, rename: from the addresses before to the addresses after
        old_ips, new_ips = instance_ips(before), instance_ips(after)
    client = make_client(settings, ctx)
    choose_marks(client, settings, _timeout(ctx))
    plan = make_plan(client, settings, old, new, old_ips, new_ips, lambda: _timeout(ctx))
    done = plan.apply(client, lambda: _timeout(ctx))
    if plan.conflicts:
        note = "; ".join(plan.conflicts)
        if done:
            note += "; done: " + "; ".join(done)
        return Result(Outcome.FAILED, note, tuple(done))
    return Result.from_changes(done, unchanged="records in step")


def _names(ctx: ActionContext) -> tuple[str | None, str | None]:
    from hookpack.validate import instance_name

    before = ctx.env.instance
    old = before.name if before and before.name else None
    new = old
    if ctx.env.hpath == "instance-rename":
        after = ctx.env.instance_after
        new = ctx.env.pre.get("INSTANCE_NEW_NAME") or (after.name if after else None) or old
    return (instance_name(old) if old else None, instance_name(new) if new else None)


def _timeout(ctx: ActionContext) -> float:
    return min(float(ctx.settings["timeout"]), ctx.deadline.remaining() - DEADLINE_MARGIN)


def make_client(settings: Mapping[str, Any], ctx: Redactor) -> Client:
    from hookpack.adapters.powerdns import Client
    from hookpack.config import read_secret

    key_file = settings["api_key_file"]
    if not key_file:
        raise ConfigError("no api_key_file set", key="dns.api_key_file")
    key = read_secret(Path(key_file))
    ctx.redact(key)
    return Client(settings["api_url"], key, server_id=settings["server_id"],
                  timeout=float(settings["timeout"]))


def choose_marks(client: Client, settings: Mapping[str, Any], timeout: float) -> str:
    """Set how ``client`` marks hookpack's RRsets (``owner_marks``; auto: ask)."""
    if settings["owner_marks"] == "auto":
        return client.detect_marks(timeout)
    client.marks = settings["owner_marks"]
    return client.marks


def marks_note(client: Client) -> str:
    """One line on the ownership rule in use, for commands and doctor."""
    if client.marks == "txt":
        return ("the PowerDNS backend cannot store comments: hookpack marks the A/AAAA/PTR "
                "records it owns with a TXT record at _hookpack.<name> "
                "(\"hookpack:<instance>\"); records without it are never changed")
    return ("hookpack marks the records it owns with an RRset comment (account hookpack); "
            "records without it are never changed")


def fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


def owner_name(name: str) -> str:
    return name.rstrip(".").lower()


def zone_for(name: str, zones: Iterable[str]) -> str | None:
    """The longest configured zone that contains ``name`` (both compared absolute)."""
    name = fqdn(name)
    best = None
    for zone in zones:
        z = fqdn(zone)
        if (name == z or name.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def instance_ips(instance: Instance | None) -> list[str]:
    """The instance's NIC addresses, normalized, invalid ones left out, in NIC order."""
    return valid_addresses(nic.ip for nic in instance.nics) if instance else []


def valid_addresses(texts: Iterable[str | None]) -> list[str]:
    """The addresses among ``texts``, normalized, in order, without repeats ("-", "None"
    and empty ones left out)."""
    import ipaddress

    found: list[str] = []
    for text in texts:
        try:
            ip = str(ipaddress.ip_address((text or "").strip()))
        except ValueError:
            continue
        if ip not in found:
            found.append(ip)
    return found


def ptr_name(ip: str) -> str:
    import ipaddress

    return ipaddress.ip_address(ip).reverse_pointer + "."


def _rtype(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _normal(rtype: str, contents: Iterable[str]) -> frozenset[str]:
    import ipaddress

    if rtype not in ("A", "AAAA"):
        return frozenset(c.lower() for c in contents)
    out = set()
    for content in contents:
        try:
            out.add(str(ipaddress.ip_address(content)))
        except ValueError:
            out.add(content)
    return frozenset(out)


@record
class Plan:
    changes: dict[str, list[Change]] = field(default_factory=dict)  # zone -> changes
    conflicts: list[str] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.changes.setdefault(change.zone, []).append(change)

    def apply(self, client: Client, timeout: Any) -> list[str]:
        done: list[str] = []
        for zone, changes in self.changes.items():
            client.patch(zone, changes, timeout=timeout())
            done.extend(c.describe() for c in changes)
        return done


def forward_addresses(client: Client, settings: Mapping[str, Any], name: str,
                      timeout: float) -> tuple[str | None, list[RRset]]:
    """The forward zone holding ``name`` and the RRsets at it (none when no zone)."""
    zone = zone_for(name, settings["forward_zones"])
    if zone is None:
        return None, []
    return zone, client.rrsets(zone, fqdn(name), timeout=timeout)


def make_plan(client: Client, settings: Mapping[str, Any], old: str | None, new: str | None,
              old_ips: list[str], new_ips: list[str], timeout: Any) -> Plan:
    """Observe PowerDNS and compute the smallest set of RRset changes.

    ``old``/``new``: the instance's name before and after the operation (None: the
    instance did not exist before / does not exist after). Only RRsets marked as
    hookpack's for ``old`` or ``new`` are changed or deleted; an RRset hookpack did not
    write is left alone (a conflict when it holds other data than wanted).
    """
    from hookpack.adapters.powerdns import Change

    plan = Plan()
    ttl = int(settings["ttl"])
    ours = {owner_name(n) for n in (old, new) if n}
    recorded: list[str] = []  # addresses in hookpack's own A/AAAA records of the instance
    for name in dict.fromkeys(n for n in (new, old) if n):
        zone, rrsets = forward_addresses(client, settings, name, timeout())
        if zone is None:
            continue
        by_type = {r.type: r for r in rrsets}
        recorded += [ip for r in rrsets if r.type in ("A", "AAAA") and r.owner() is not None
                     and owner_name(r.owner() or "") in ours for ip in r.contents]
        wanted_here = owner_name(name) == owner_name(new) if new else False
        if wanted_here and "CNAME" in by_type:
            plan.conflicts.append(f"{name} is a CNAME hookpack did not create; left alone")
            continue
        for rtype in ("A", "AAAA"):
            desired = frozenset(ip for ip in new_ips if _rtype(ip) == rtype) \
                if wanted_here else frozenset()
            _reconcile(plan, zone, fqdn(name), rtype, by_type.get(rtype), desired,
                       ttl, owner_name(new) if new else "", ours, Change)
    # Ganeti gives a modify's hooks only the new NICs: the old addresses' PTRs are found
    # through the A/AAAA records hookpack wrote for the instance.
    for ip in dict.fromkeys([*new_ips, *old_ips, *valid_addresses(recorded)]):
        rname = ptr_name(ip)
        zone = zone_for(rname, settings["reverse_zones"])
        if zone is None:
            continue
        current = next((r for r in client.rrsets(zone, rname, timeout=timeout())
                        if r.type == "PTR"), None)
        desired = frozenset({fqdn(new)}) if new and ip in new_ips else frozenset()
        _reconcile(plan, zone, rname, "PTR", current, desired, ttl,
                   owner_name(new) if new else "", ours, Change)
    return plan


def _reconcile(plan: Plan, zone: str, name: str, rtype: str, current: RRset | None,
               desired: frozenset[str], ttl: int, owner: str, ours: set[str],
               change: type[Change]) -> None:
    label = f"{rtype} {name.rstrip('.')}"
    if current is None:
        if desired:
            plan.add(change(zone, name, rtype, "REPLACE", tuple(sorted(desired)), ttl, owner))
        return
    mine = current.owner() is not None and owner_name(current.owner() or "") in ours
    have = _normal(rtype, current.contents)
    if not mine:
        if desired and have != _normal(rtype, desired):
            plan.conflicts.append(f"{label} holds {', '.join(sorted(have))}, records hookpack "
                                  "did not create; left alone")
        return
    if not desired:
        plan.add(change(zone, name, rtype, "DELETE"))
    elif have != _normal(rtype, desired) or current.ttl != ttl or current.owner() != owner:
        plan.add(change(zone, name, rtype, "REPLACE", tuple(sorted(desired)), ttl, owner))


# --- hookpack dns ... ----------------------------------------------------------------------

def add_cli(subparsers: Any) -> None:
    from hookpack.actions.dns import sync as dns_sync

    dns = subparsers.add_parser("dns", help="PowerDNS sync").add_subparsers(metavar="ACTION")
    p = dns.add_parser("check", help="check the API key, the API and the configured zones")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_config_arg(p)
    p.set_defaults(handler=cmd_check)
    dns_sync.add_cli(dns)


def cmd_check(ns: argparse.Namespace) -> int:
    from hookpack.adapters.powerdns import PowerDnsError
    from hookpack.config import load

    config = load(ns)
    settings = config.section("dns", SETTINGS)

    client = make_client(settings, NoRedact())
    if not settings["forward_zones"] and not settings["reverse_zones"]:
        raise ActionError("dns: no forward_zones or reverse_zones configured")
    zones: list[dict[str, Any]] = []
    try:
        choose_marks(client, settings, float(settings["timeout"]))
        records, backend_error = marks_note(client), None
    except PowerDnsError as err:
        records, backend_error = None, str(err)
    for zone in [*settings["forward_zones"], *settings["reverse_zones"]]:
        try:
            client.rrsets(fqdn(zone), fqdn(zone))
        except PowerDnsError as err:
            zones.append({"zone": fqdn(zone), "ok": False, "error": str(err)})
        else:
            zones.append({"zone": fqdn(zone), "ok": True, "error": None})
    if getattr(ns, "json", False):
        print(json.dumps({"zones": zones, "records": records, "backends_error": backend_error},
                         sort_keys=True))
    else:
        print(f"records: {records}" if backend_error is None else f"backends: {backend_error}")
        for z in zones:
            print(f"zone {z['zone']}: {z['error'] or 'ok'}")
    return 0 if backend_error is None and all(z["ok"] for z in zones) else 1


# --- hookpack doctor ---------------------------------------------------------------------

def doctor(cfg: Any, paths: Any) -> list[Any]:
    """Key file root-only, API answering, every configured zone present."""
    from hookpack.adapters.powerdns import PowerDnsError
    from hookpack.doctor import FAIL, PASS, WARN, Check

    settings = cfg.section("dns", SETTINGS)
    if not settings["forward_zones"] and not settings["reverse_zones"]:
        return [Check("dns", WARN, "no forward_zones or reverse_zones: nothing to keep in step",
                      "set [dns] forward_zones (and reverse_zones)")]
    try:
        client = make_client(settings, NoRedact())
    except ConfigError as err:
        return [Check("dns", FAIL, str(err), f"put the API key in {settings['api_key_file']}, "
                      "mode 600, owned by root")]
    checks = []
    try:
        choose_marks(client, settings, float(settings["timeout"]))
        checks.append(Check("dns", PASS, marks_note(client)))
    except PowerDnsError as err:
        checks.append(Check("dns", FAIL, f"cannot ask PowerDNS for its backends: {err}",
                            "fix api_url/api_key_file"))
    for zone in [*settings["forward_zones"], *settings["reverse_zones"]]:
        try:
            client.rrsets(fqdn(zone), fqdn(zone))
        except PowerDnsError as err:
            checks.append(Check("dns", FAIL, f"zone {fqdn(zone)}: {err}",
                                "create the zone in PowerDNS, or fix api_url/api_key_file"))
        else:
            checks.append(Check("dns", PASS, f"zone {fqdn(zone)} readable at {client.host}"))
    return checks



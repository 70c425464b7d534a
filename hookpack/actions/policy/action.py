"""Pre-hook gate: veto instance-add/rename when the name breaks the site's rules."""

from __future__ import annotations

import re
from collections.abc import Callable

from hookpack.action import ActionContext
from hookpack.config import Field
from hookpack.errors import ConfigError, HookpackError
from hookpack.result import Result

SETTINGS = {
    "name_pattern": Field(str, "", "Regular expression every instance name must match "
                          "(whole name). Empty: any name."),
    "dns_check": Field(bool, False, "Veto when PowerDNS already has the name pointing at an "
                       "address the instance will not use (or as a CNAME). Uses the [dns] "
                       "section's API URL, key file, forward zones and timeout."),
    "dns_fail_closed": Field(bool, False, "When the DNS check does not complete (PowerDNS "
                             "unreachable, timeout, name resolution, bad key, an unexpected "
                             "error, the hook's deadline), veto instead of allowing with a "
                             "warning."),
    "netbox_require_known": Field(bool, False, "Veto when NetBox has no virtual machine of "
                                  "that name. Uses the [netbox] section's URL, token file "
                                  "and timeout."),
    "netbox_fail_closed": Field(bool, False, "When the NetBox check does not complete "
                                "(as for dns_fail_closed), veto instead of allowing with a "
                                "warning."),
}

# Seconds kept back from the hook's deadline: the gate must decide (and fail open or
# closed as configured) before the dispatcher's watchdog decides for it. Requests time
# out DEADLINE_MARGIN before it; a check still running BOUND_MARGIN before it (a
# request not honouring its timeout) is given up.
DEADLINE_MARGIN = 0.5
BOUND_MARGIN = 0.25


def run(ctx: ActionContext) -> Result:
    name = _new_name(ctx)
    if not name:
        return Result.skipped("no instance name in the environment")
    pattern = ctx.settings["name_pattern"]
    checks = ctx.settings["dns_check"] or ctx.settings["netbox_require_known"]
    if not pattern and not checks:
        return Result.nochange("no name rule configured")
    if pattern:
        try:
            rule = re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"not a valid regular expression: {err}",
                              key="policy.name_pattern", path=str(ctx.config.path)) from None
        if not rule.fullmatch(name):
            return Result.veto(
                f"instance name {name!r} does not match the site rule '{pattern}'")
    warnings: list[str] = []
    if checks:
        from hookpack.validate import instance_name

        try:
            instance_name(name)  # before it goes into a DNS or NetBox query
        except HookpackError as err:
            return Result.veto(str(err))
    if ctx.settings["dns_check"]:
        verdict = _external(ctx, "DNS", ctx.settings["dns_fail_closed"], name, warnings,
                            lambda: _dns_conflict(ctx, name))
        if verdict:
            return verdict
    if ctx.settings["netbox_require_known"]:
        verdict = _external(ctx, "NetBox", ctx.settings["netbox_fail_closed"], name,
                            warnings, lambda: _netbox_unknown(ctx, name))
        if verdict:
            return verdict
    if warnings:
        return Result.nochange(f"name {name!r} allowed; warning: " + "; ".join(warnings))
    return Result.nochange(f"name {name!r} allowed")


def _external(ctx: ActionContext, what: str, fail_closed: bool, name: str,
              warnings: list[str], check: Callable[[], str]) -> Result | None:
    """Run one external check: a veto, or None to go on.

    Only a check that completes and finds nothing wrong lets the name through. Every
    other ending (the service's errors, name resolution, a timeout, an unexpected
    exception, the hook's deadline coming first) is "not checked": a veto when
    ``fail_closed``, else a warning. The check runs in a thread given up at the
    deadline minus BOUND_MARGIN, so the gate decides even when a request does not
    honour its own timeout.
    """
    from hookpack.deadline import run_bounded

    budget = ctx.deadline.remaining() - BOUND_MARGIN
    bounded = run_bounded(check, budget, f"policy-{what.lower()}")
    if not bounded.finished:
        why = f"{what} check not finished {max(budget, 0):.1f} s before the hook's deadline"
    elif isinstance(bounded.error, HookpackError):
        why = str(bounded.error)
    elif bounded.error is not None:
        why = f"unexpected error: {type(bounded.error).__name__}: {bounded.error}"
    elif not isinstance(bounded.value, str):
        why = f"unexpected result: {type(bounded.value).__name__}"
    else:
        return Result.veto(bounded.value) if bounded.value else None
    if fail_closed:
        return Result.veto(f"cannot check {what} for {name!r}, refusing (fail closed): {why}")
    warnings.append(f"{what} not checked (fail open): {why}")
    return None


def at_deadline(ctx: ActionContext, why: str) -> Result | None:
    """What the dispatcher reports when this action did not end by the hook's deadline
    (not started, or abandoned): a veto when a check that fails closed is on."""
    closed = [what for what, on, fail_closed in (
        ("DNS", "dns_check", "dns_fail_closed"),
        ("NetBox", "netbox_require_known", "netbox_fail_closed"))
        if ctx.settings.get(on) and ctx.settings.get(fail_closed)]
    if not closed or _new_name(ctx) == "":
        return None
    return Result.veto(f"cannot check {' and '.join(closed)} for {_new_name(ctx)!r}, "
                       f"refusing (fail closed): {why}")


def _check_timeout(ctx: ActionContext, configured: float) -> float:
    return min(float(configured), ctx.deadline.remaining() - DEADLINE_MARGIN)


def _dns_conflict(ctx: ActionContext, name: str) -> str:
    from hookpack.actions.dns import action as dns

    settings = ctx.config.section("dns", dns.SETTINGS)
    client = dns.make_client(settings, ctx)
    zone, rrsets = dns.forward_addresses(client, settings, name,
                                         _check_timeout(ctx, settings["timeout"]))
    if zone is None:
        return ""
    will_use = set(dns.instance_ips(ctx.env.instance))
    for rrset in rrsets:
        if rrset.type == "CNAME":
            return (f"DNS already has {name} as an alias of "
                    f"{', '.join(sorted(rrset.contents))}")
    have = {ip for r in rrsets if r.type in ("A", "AAAA")
            for ip in dns._normal(r.type, r.contents)}
    unused = sorted(have - will_use)
    if unused:
        return (f"DNS already has {name} -> {', '.join(unused)}, "
                f"{'an address' if len(unused) == 1 else 'addresses'} the instance will "
                "not use")
    return ""


def _netbox_unknown(ctx: ActionContext, name: str) -> str:
    from hookpack.actions.netbox import action as netbox
    from hookpack.actions.netbox.client import find_cluster

    settings = ctx.config.section("netbox", netbox.SETTINGS)
    api = netbox.connect(settings, ctx, _check_timeout(ctx, settings["timeout"]))
    cluster = netbox.cluster_name(settings, ctx.env.pre.get("CLUSTER"))
    if netbox.find_vm(api, name, find_cluster(api, cluster)) is None:
        return f"NetBox does not know a virtual machine named {name!r} in cluster {cluster!r}"
    return ""


def _new_name(ctx: ActionContext) -> str:
    if ctx.env.hpath == "instance-rename":
        return ctx.env.pre.get("INSTANCE_NEW_NAME") or ""
    return ctx.env.instance.name if ctx.env.instance else ""

"""Keep a NetBox virtual machine (size, status, interfaces, IPs) in step with each instance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext, NoRedact
from hookpack.actions.netbox.client import (
    NetBoxUnavailable,
    Writes,
    connect,
    find_cluster,
    find_vm,
)
from hookpack.actions.netbox.reconcile import NicSpec, VmSpec, is_up, reconcile, remove
from hookpack.config import Field
from hookpack.errors import ActionError, ConfigError
from hookpack.result import Result

if TYPE_CHECKING:
    from hookpack.env import Instance

SETTINGS = {
    "url": Field(str, "", "Base URL of NetBox (e.g. https://netbox.example.org). Empty: "
                 "the action and the policy check cannot run.", pattern=r"(https?://\S+)?"),
    "token_file": Field(str, "/etc/hookpack/netbox-token", "Root-only file holding the "
                        "NetBox API token."),
    "cluster": Field(str, "", "NetBox cluster the virtual machines belong to (must exist). "
                     "Empty: the Ganeti cluster's name."),
    "timeout": Field(float, 3.0, "Timeout of one NetBox request, in seconds (further bounded "
                     "by the hook's deadline).", minimum=0.1, maximum=30),
    "disk_unit": Field(str, "MB", "Unit of the VM disk field: MB for NetBox 4.1 and later, "
                       "GB before.", choices=("MB", "GB")),
    "interface_name": Field(str, "eth{index}", "Name of the VM interface for NIC <index>.",
                            pattern=r".*\{index\}.*"),
}

DEADLINE_MARGIN = 0.5


def run(ctx: ActionContext) -> Result:
    from hookpack.actions.dns.action import _names

    old, new = _names(ctx)
    if not old and not new:
        return Result.skipped("no instance name in the environment")
    settings = ctx.settings
    timeout = min(float(settings["timeout"]), ctx.deadline.remaining() - DEADLINE_MARGIN)
    api = connect(settings, ctx, timeout)
    writes = Writes(api)
    cluster_id = find_cluster(api, cluster_name(settings, ctx.env.pre.get("CLUSTER")))
    if ctx.env.hpath == "instance-remove":
        remove(writes, old or "", cluster_id)
        return Result.from_changes(writes.lines, unchanged="nothing of it to remove in NetBox")
    instance = ctx.env.instance_after or ctx.env.instance
    if instance is None:
        return Result.skipped("no instance in the environment")
    problems = reconcile(writes, settings, spec_of(instance, new or ""), cluster_id,
                         old_name=old or "")
    if problems:
        return Result.failed("; ".join([*writes.lines, *problems]))
    return Result.from_changes(writes.lines, unchanged="virtual machine in step")


def cluster_name(settings: Mapping[str, Any], ganeti_cluster: str | None) -> str:
    return str(settings["cluster"] or ganeti_cluster or "")


def spec_of(instance: Instance, name: str) -> VmSpec:
    """What NetBox should hold for ``instance`` (from a hook's environment)."""
    sizes = [d.size_mib for d in instance.disks if d.size_mib is not None]
    return VmSpec(name=name, vcpus=instance.vcpus, memory=instance.memory,
                  disk_mib=sum(sizes) if instance.disks else None,
                  up=is_up(instance.status),
                  nics=tuple(NicSpec(n.index, (n.mac or "").upper() or None, n.ip)
                             for n in instance.nics))


def doctor(cfg: Any, paths: Any) -> list[Any]:
    """Token file root-only, NetBox answering with the token, the cluster known."""
    from hookpack.doctor import FAIL, PASS, Check

    settings = cfg.section("netbox", SETTINGS)
    try:
        api = connect(settings, NoRedact(), float(settings["timeout"]))
    except ConfigError as err:
        return [Check("netbox", FAIL, str(err), "set [netbox] url and a root-only token_file")]
    cluster = cluster_name(settings, _ssconf_cluster(paths))
    try:
        find_cluster(api, cluster)
    except NetBoxUnavailable as err:
        return [Check("netbox", FAIL, str(err), "check [netbox] url, token_file and the "
                      "token's permissions")]
    except ActionError:
        return [Check("netbox", FAIL, f"NetBox has no cluster named {cluster!r}",
                      "create it in NetBox or set [netbox] cluster")]
    return [Check("netbox", PASS, f"NetBox answers; cluster {cluster!r} found")]


def ganeti_cluster(cfg: Any) -> str:
    """The Ganeti cluster's name from ssconf ('' when this node has none)."""
    from hookpack.action import Paths

    return _ssconf_cluster(Paths.from_config(cfg))


def _ssconf_cluster(paths: Any) -> str:
    try:
        return str((paths.ganeti_data_dir / "ssconf_cluster_name").read_text().strip())
    except OSError:
        return ""


def add_cli(subparsers: Any) -> None:
    from hookpack.actions.netbox import sync as netbox_sync

    netbox = subparsers.add_parser("netbox", help="NetBox sync").add_subparsers(
        metavar="ACTION")
    netbox_sync.add_cli(netbox)


__all__ = ["SETTINGS", "NetBoxUnavailable", "add_cli", "connect", "doctor", "find_vm", "run"]

"""Keep a NetBox virtual machine (size, status, interfaces, IPs) in step with each instance."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookpack.action import ActionContext
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

TAG = "hookpack"  # slug of the tag marking what hookpack created in NetBox
DEADLINE_MARGIN = 0.5


class NetBoxUnavailable(ActionError):
    """NetBox could not be asked (refused, timeout, HTTP error, bad token)."""


def connect(settings: Mapping[str, Any], ctx: ActionContext, timeout: float) -> Any:
    """A pynetbox API whose every request has ``timeout`` (requests has no default one)."""
    if not settings["url"]:
        raise ConfigError("no url set", key="netbox.url")
    if timeout <= 0:
        raise NetBoxUnavailable("no time left before the hook's deadline")
    from hookpack.config import read_secret

    token = read_secret(Path(settings["token_file"]))
    ctx.redact(token)
    import pynetbox
    import requests
    from requests.adapters import HTTPAdapter

    class _TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment
    adapter = _TimeoutAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    api = pynetbox.api(settings["url"], token=token)
    api.http_session = session
    return api


def _guard(what: str, call: Callable[[], Any]) -> Any:
    """Run one NetBox call; network and HTTP errors become a clean NetBoxUnavailable."""
    import pynetbox
    import requests

    try:
        return call()
    except requests.Timeout:
        raise NetBoxUnavailable(f"NetBox did not answer in time ({what})") from None
    except requests.RequestException as err:
        raise NetBoxUnavailable(f"NetBox unreachable ({what}): "
                                f"{type(err).__name__}") from None
    except pynetbox.RequestError as err:
        status = getattr(err.req, "status_code", "?")
        raise NetBoxUnavailable(f"NetBox refused {what}: HTTP {status}: "
                                f"{str(err.error)[:120]}") from None
    except (pynetbox.ContentError, ValueError) as err:
        raise NetBoxUnavailable(f"NetBox answered {what} with something unexpected: "
                                f"{str(err)[:120]}") from None


def find_vm(api: Any, name: str) -> Any:
    """The VM named ``name``, or None."""
    found: list[Any] = list(_guard(f"lookup of {name}",
                        lambda: list(api.virtualization.virtual_machines.filter(name=name))))
    return found[0] if found else None


def run(ctx: ActionContext) -> Result:
    from hookpack.actions.dns.action import _names

    old, new = _names(ctx)
    if not old and not new:
        return Result.skipped("no instance name in the environment")
    settings = ctx.settings
    timeout = min(float(settings["timeout"]), ctx.deadline.remaining() - DEADLINE_MARGIN)
    api = connect(settings, ctx, timeout)
    changes: list[str] = []
    if ctx.env.hpath == "instance-remove":
        _remove(api, old or "", changes)
        return Result.from_changes(changes, unchanged="nothing of it in NetBox")
    instance = ctx.env.instance_after or ctx.env.instance
    if instance is None:
        return Result.skipped("no instance in the environment")
    cluster_name = settings["cluster"] or ctx.env.pre.get("CLUSTER") or ""
    _sync(api, settings, old or "", new or "", instance, cluster_name, changes)
    return Result.from_changes(changes, unchanged="virtual machine in step")


def _ref_id(value: Any) -> Any:
    return getattr(value, "id", value)


def _tag_id(api: Any) -> int:
    tags = api.extras.tags
    found = _guard("tag lookup", lambda: list(tags.filter(slug=TAG)))
    if found:
        return int(found[0].id)
    tag = _guard("tag creation", lambda: tags.create(name=TAG, slug=TAG))
    return int(tag.id)


def _owned(record: Any) -> bool:
    return any(getattr(t, "slug", None) == TAG for t in (getattr(record, "tags", None) or []))


def _desired_vm(settings: Mapping[str, Any], instance: Instance, name: str,
                cluster_id: int) -> dict[str, Any]:
    disk_mib = sum(d.size_mib or 0 for d in instance.disks)
    disk = disk_mib if settings["disk_unit"] == "MB" else math.ceil(disk_mib / 1024)
    memory = instance.memory if instance.memory is not None else None
    return {"name": name, "cluster": cluster_id, "vcpus": instance.vcpus, "memory": memory,
            "disk": disk, "status": "active" if _is_up(instance.status) else "offline"}


def _is_up(status: str) -> bool:
    """Ganeti's INSTANCE_STATUS: whether the instance is marked up ("True"), not its state."""
    return status.strip().lower() in ("true", "up")


def _current_vm(vm: Any) -> dict[str, Any]:
    def field(key: str) -> Any:
        return getattr(vm, key, None)

    status = getattr(field("status"), "value", field("status"))
    vcpus = field("vcpus")
    return {"name": vm.name, "cluster": _ref_id(field("cluster")),
            "vcpus": int(float(vcpus)) if vcpus is not None else None,
            "memory": field("memory"), "disk": field("disk"), "status": status}


def _sync(api: Any, settings: Mapping[str, Any], old: str, new: str, instance: Instance,
          cluster_name: str, changes: list[str]) -> None:
    virt = api.virtualization
    clusters = _guard("cluster lookup", lambda: list(virt.clusters.filter(name=cluster_name)))
    if not clusters:
        raise ActionError(f"NetBox has no cluster named {cluster_name!r}; create it or set "
                          "netbox.cluster")
    cluster_id = int(clusters[0].id)
    vm: Any = find_vm(api, old) if old and old != new else None
    if vm is None:
        vm = find_vm(api, new)
    desired = _desired_vm(settings, instance, new, cluster_id)
    if vm is None:
        tag = _tag_id(api)
        vm = _guard("VM creation", lambda: virt.virtual_machines.create(
            **{k: v for k, v in desired.items() if v is not None}, tags=[tag]))
        changes.append(f"created VM {new}")
    else:
        current = _current_vm(vm)
        diff = {k: v for k, v in desired.items() if v is not None and current.get(k) != v}
        if diff:
            _guard("VM update", partial(vm.update, diff))
            changes.append(f"updated VM {new}: {', '.join(sorted(diff))}")
    primaries = _sync_interfaces(api, settings, vm, instance, changes)
    want = {"primary_ip4": primaries.get(4), "primary_ip6": primaries.get(6)}
    vm = _guard("VM reload", partial(virt.virtual_machines.get, vm.id))
    diff = {k: v for k, v in want.items() if _ref_id(getattr(vm, k, None)) != v}
    if diff:
        _guard("primary IP update", partial(vm.update, diff))
        changes.append(f"set {', '.join(sorted(diff))} of VM {new}")


def _sync_interfaces(api: Any, settings: Mapping[str, Any], vm: Any, instance: Instance,
                     changes: list[str]) -> dict[int, int | None]:
    import ipaddress

    virt, ipam = api.virtualization, api.ipam
    existing = {i.name: i for i in _guard("interface lookup", lambda: list(
        virt.interfaces.filter(virtual_machine_id=vm.id)))}
    ips = _guard("IP lookup", lambda: list(ipam.ip_addresses.filter(virtual_machine_id=vm.id)))
    tag: int | None = None
    wanted_names = set()
    wanted_ips: set[tuple[int, str]] = set()
    primaries: dict[int, int | None] = {4: None, 6: None}
    for nic in instance.nics:
        ifname = settings["interface_name"].format(index=nic.index)
        wanted_names.add(ifname)
        iface = existing.get(ifname)
        mac = (nic.mac or "").upper() or None
        if iface is None:
            tag = tag if tag is not None else _tag_id(api)
            iface = _guard("interface creation", partial(
                virt.interfaces.create, virtual_machine=vm.id, name=ifname, mac_address=mac,
                tags=[tag]))
            changes.append(f"created interface {ifname}")
        elif mac and (getattr(iface, "mac_address", None) or "").upper() != mac:
            _guard("interface update", partial(iface.update, {"mac_address": mac}))
            changes.append(f"set MAC of {ifname}")
        try:
            ip = ipaddress.ip_address((nic.ip or "").strip())
        except ValueError:
            continue
        address = f"{ip}/{ip.max_prefixlen}"
        wanted_ips.add((int(iface.id), str(ip)))
        match = next((r for r in ips if _ip_of(r) == str(ip)
                      and getattr(r, "assigned_object_id", None) == iface.id), None)
        if match is None:
            tag = tag if tag is not None else _tag_id(api)
            match = _guard("IP creation", partial(
                ipam.ip_addresses.create, address=address, status="active",
                assigned_object_type="virtualization.vminterface",
                assigned_object_id=iface.id, tags=[tag]))
            changes.append(f"added IP {address} to {ifname}")
        if primaries[ip.version] is None:
            primaries[ip.version] = int(match.id)
    for record in ips:
        key = (getattr(record, "assigned_object_id", None), _ip_of(record))
        if key not in wanted_ips and _owned(record):
            _guard("IP deletion", record.delete)
            changes.append(f"removed IP {record.address}")
    for ifname, iface in existing.items():
        if ifname not in wanted_names and _owned(iface):
            _guard("interface deletion", iface.delete)
            changes.append(f"removed interface {ifname}")
    return primaries


def _ip_of(record: Any) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_interface(str(record.address)).ip)
    except ValueError:
        return ""


def _remove(api: Any, name: str, changes: list[str]) -> None:
    vm = find_vm(api, name)
    if vm is None:
        return
    if not _owned(vm):
        status = getattr(vm.status, "value", vm.status)
        if status != "offline":
            _guard("VM update", lambda: vm.update({"status": "offline"}))
            changes.append(f"set VM {name} offline (not created by hookpack: kept)")
        return
    ips = _guard("IP lookup", lambda: list(
        api.ipam.ip_addresses.filter(virtual_machine_id=vm.id)))
    for record in ips:
        if _owned(record):
            _guard("IP deletion", record.delete)
            changes.append(f"removed IP {record.address}")
    _guard("VM deletion", vm.delete)
    changes.append(f"deleted VM {name}")


def doctor(cfg: Any, paths: Any) -> list[Any]:
    """Token file root-only, NetBox answering with the token, the cluster known."""
    from hookpack.doctor import FAIL, PASS, Check

    settings = cfg.section("netbox", SETTINGS)

    class _NoRedact:
        @staticmethod
        def redact(secret: str) -> None:
            return None

    try:
        api = connect(settings, _NoRedact(), float(settings["timeout"]))  # type: ignore[arg-type]
    except ConfigError as err:
        return [Check("netbox", FAIL, str(err), "set [netbox] url and a root-only token_file")]
    cluster = settings["cluster"] or _ganeti_cluster(paths)
    try:
        found = _guard("cluster lookup", lambda: list(
            api.virtualization.clusters.filter(name=cluster)))
    except ActionError as err:
        return [Check("netbox", FAIL, str(err), "check [netbox] url, token_file and the "
                      "token's permissions")]
    if not found:
        return [Check("netbox", FAIL, f"NetBox has no cluster named {cluster!r}",
                      "create it in NetBox or set [netbox] cluster")]
    return [Check("netbox", PASS, f"NetBox answers; cluster {cluster!r} found")]


def _ganeti_cluster(paths: Any) -> str:
    try:
        return str((paths.ganeti_data_dir / "ssconf_cluster_name").read_text().strip())
    except OSError:
        return ""

"""Bring one NetBox virtual machine in step with one Ganeti instance, or remove it.

What hookpack creates carries its tag; only that is ever deleted. Operators' objects
on hookpack's VMs survive: an IP address or MAC address they added is unassigned (it
stays in NetBox) before an interface or VM it hangs on is deleted, since NetBox
deletes an interface's addresses with it. From NetBox 4.2 on, MAC addresses are
objects of their own (an interface's ``mac_address`` is read-only there): hookpack
keeps one per NIC and makes it the interface's primary MAC. An address that IPAM
already holds unassigned is taken over; one assigned to another object is reported,
never moved. VM names are unique per cluster only, so every lookup is in the cluster.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

from hookpack.actions.netbox.client import Writes, find_vm, listed, owned, ref_id
from hookpack.record import record

VMIFACE = "virtualization.vminterface"
FIRST_MAC_OBJECT_VERSION = (4, 2)


@record(frozen=True)
class NicSpec:
    index: int
    mac: str | None
    ip: str | None


@record(frozen=True)
class VmSpec:
    """What NetBox should hold for one instance."""

    name: str
    vcpus: int | None
    memory: int | None
    disk_mib: int | None
    up: bool
    nics: tuple[NicSpec, ...]


def is_up(status: str) -> bool:
    """Ganeti's instance status ("True"/"up"): whether it is marked up, not its state."""
    return status.strip().lower() in ("true", "up")


def vm_fields(settings: Mapping[str, Any], spec: VmSpec, cluster_id: int) -> dict[str, Any]:
    disk = None
    if spec.disk_mib is not None:
        disk = spec.disk_mib if settings["disk_unit"] == "MB" else math.ceil(spec.disk_mib / 1024)
    fields = {"name": spec.name, "cluster": cluster_id, "vcpus": spec.vcpus,
              "memory": spec.memory, "disk": disk,
              "status": "active" if spec.up else "offline"}
    return {k: v for k, v in fields.items() if v is not None}


def current_fields(vm: Any) -> dict[str, Any]:
    def field(key: str) -> Any:
        return getattr(vm, key, None)

    vcpus = field("vcpus")
    return {"name": vm.name, "cluster": ref_id(field("cluster")),
            "vcpus": int(float(vcpus)) if vcpus is not None else None,
            "memory": field("memory"), "disk": field("disk"),
            "status": getattr(field("status"), "value", field("status"))}


def reconcile(w: Writes, settings: Mapping[str, Any], spec: VmSpec, cluster_id: int,
              old_name: str = "") -> list[str]:
    """Make NetBox's VM match ``spec`` (found by ``old_name`` first on a rename).

    Returns the problems (addresses NetBox holds elsewhere) after doing all it could.
    """
    api = w.api
    vm = find_vm(api, old_name, cluster_id) if old_name and old_name != spec.name else None
    if vm is None:
        vm = find_vm(api, spec.name, cluster_id)
    desired = vm_fields(settings, spec, cluster_id)
    if vm is None:
        vm = w.create(f"created VM {spec.name}", api.virtualization.virtual_machines, desired)
    else:
        current = current_fields(vm)
        diff = {k: v for k, v in desired.items() if current.get(k) != v}
        if diff:
            w.update(f"updated VM {spec.name}: {', '.join(sorted(diff))}", vm, diff)
    vm_state = VmObjects(w, vm)
    vm_state.reconcile(spec.nics, settings["interface_name"])
    return vm_state.problems


def remove(w: Writes, name: str, cluster_id: int) -> None:
    """Delete hookpack's VM ``name`` (keeping operators' addresses), or mark theirs offline."""
    vm = find_vm(w.api, name, cluster_id)
    if vm is None:
        return
    if not owned(vm):
        if getattr(vm.status, "value", vm.status) != "offline":
            w.update(f"set VM {name} offline (not created by hookpack: kept)", vm,
                     {"status": "offline"})
        return
    VmObjects(w, vm).release_all()
    w.delete(f"deleted VM {name}", vm)


class VmObjects:
    """One VM's interfaces, IP addresses and MAC addresses, read once, then reconciled."""

    def __init__(self, w: Writes, vm: Any) -> None:
        self.w, self.vm, self.api = w, vm, w.api
        self.problems: list[str] = []
        # NetBox 4.2+: MAC addresses are objects; a NetBox that does not say: the same
        version = w.version()
        self.use_mac_objects = not version or version >= FIRST_MAC_OBJECT_VERSION
        self.interfaces: dict[str, Any] = {}
        self.ips: list[Any] = []
        self.macs: list[Any] = []
        if vm.id is not None:
            virt, ipam = self.api.virtualization, self.api.ipam
            self.interfaces = {i.name: i for i in listed(
                "interface lookup", virt.interfaces, virtual_machine_id=vm.id)}
            self.ips = listed("IP lookup", ipam.ip_addresses, virtual_machine_id=vm.id)
            if self.use_mac_objects:
                self.macs = listed("MAC lookup", self.api.dcim.mac_addresses,
                                   virtual_machine_id=vm.id)
        # where each record is assigned now (object identity -> interface id)
        self.assigned = {id(r): getattr(r, "assigned_object_id", None)
                         for r in [*self.ips, *self.macs]}
        self.kept: set[int] = set()  # ids() of the IP and MAC records that stay
        self.primary: dict[int, Any] = {}

    # -- per NIC ------------------------------------------------------------------------
    def reconcile(self, nics: tuple[NicSpec, ...], name_pattern: str) -> None:
        wanted = set()
        for nic in nics:
            ifname = name_pattern.format(index=nic.index)
            wanted.add(ifname)
            iface = self.interface(ifname, nic.mac)
            if self.use_mac_objects:
                self.set_mac(iface, ifname, nic.mac)
            self.set_ip(iface, ifname, nic.ip)
        self.drop_unwanted_addresses()
        for ifname, iface in self.interfaces.items():
            if ifname not in wanted and owned(iface):
                self.release(iface)
                self.w.delete(f"removed interface {ifname}", iface)
        self.set_primaries()

    def interface(self, ifname: str, mac: str | None) -> Any:
        iface = self.interfaces.get(ifname)
        legacy_mac = None if self.use_mac_objects else mac
        if iface is None:
            fields = {"virtual_machine": self.vm.id, "name": ifname}
            if legacy_mac:
                fields["mac_address"] = legacy_mac
            return self.w.create(f"created interface {ifname}",
                                 self.api.virtualization.interfaces, fields)
        if legacy_mac and (getattr(iface, "mac_address", None) or "").upper() != legacy_mac:
            self.w.update(f"set MAC of {ifname}", iface, {"mac_address": legacy_mac})
        return iface

    def set_mac(self, iface: Any, ifname: str, mac: str | None) -> None:
        if not mac:
            return
        primary = getattr(iface, "primary_mac_address", None)
        record = next((m for m in self.macs if self.assigned[id(m)] == iface.id
                       and str(m.mac_address).upper() == mac), None)
        if record is None:
            record = self.w.create(f"added MAC {mac} to {ifname}", self.api.dcim.mac_addresses,
                                   {"mac_address": mac, "assigned_object_type": VMIFACE,
                                    "assigned_object_id": iface.id})
            self.assigned[id(record)] = iface.id
        self.kept.add(id(record))
        if primary is None or str(getattr(primary, "mac_address", "")).upper() != mac:
            self.w.update(f"set primary MAC of {ifname} to {mac}", iface,
                          {"primary_mac_address": record.id})

    def set_ip(self, iface: Any, ifname: str, text: str | None) -> None:
        try:
            ip = ipaddress.ip_address((text or "").strip())
        except ValueError:
            return
        address = f"{ip}/{ip.max_prefixlen}"
        record = next((r for r in self.ips if address_of(r) == str(ip)), None)
        if record is None:
            record = self.take_or_create_ip(str(ip), address, iface, ifname)
        elif self.assigned[id(record)] != iface.id:
            self.w.update(f"moved IP {record.address} to {ifname}", record,
                          {"assigned_object_type": VMIFACE, "assigned_object_id": iface.id})
        if record is None:
            return
        self.assigned[id(record)] = iface.id
        self.kept.add(id(record))
        self.primary.setdefault(ip.version, record)

    def take_or_create_ip(self, ip: str, address: str, iface: Any, ifname: str) -> Any:
        """IPAM's own record of ``ip`` when it is free, a new one when IPAM has none."""
        same = [r for r in listed(f"IP lookup of {ip}", self.api.ipam.ip_addresses,
                                  address=ip) if getattr(r, "vrf", None) is None]
        free = next((r for r in same if getattr(r, "assigned_object_id", None) is None), None)
        if free is not None:
            self.w.update(f"assigned IP {free.address} (already in IPAM) to {ifname}", free,
                          {"assigned_object_type": VMIFACE, "assigned_object_id": iface.id})
            return free
        if same:
            self.problems.append(f"IP {ip} is assigned in NetBox to {holder(same[0])}: not "
                                 f"added to {ifname}")
            return None
        return self.w.create(f"added IP {address} to {ifname}", self.api.ipam.ip_addresses,
                             {"address": address, "status": "active",
                              "assigned_object_type": VMIFACE,
                              "assigned_object_id": iface.id})

    # -- what goes ----------------------------------------------------------------------
    def drop_unwanted_addresses(self) -> None:
        for ip in self.ips:
            if id(ip) not in self.kept and owned(ip):
                self.w.delete(f"removed IP {ip.address}", ip)
        for mac in self.macs:
            if id(mac) not in self.kept and owned(mac):
                self.w.delete(f"removed MAC {mac.mac_address}", mac)

    def release(self, iface: Any) -> None:
        """Unassign operators' addresses from ``iface`` so deleting it keeps them."""
        for ip in self.ips:
            if self.assigned[id(ip)] == iface.id and not owned(ip) and id(ip) not in self.kept:
                self.unassign_ip(ip)
        foreign = [m for m in self.macs if self.assigned[id(m)] == iface.id and not owned(m)
                   and id(m) not in self.kept]
        if foreign and getattr(iface, "primary_mac_address", None) is not None:
            self.w.update(None, iface, {"primary_mac_address": None})
        for mac in foreign:
            self.w.update(f"unassigned MAC {mac.mac_address} (not hookpack's: kept)", mac,
                          {"assigned_object_type": None, "assigned_object_id": None})
            self.assigned[id(mac)] = None

    def unassign_ip(self, record: Any) -> None:
        for key in ("primary_ip4", "primary_ip6"):
            if ref_id(getattr(self.vm, key, None)) == record.id:
                self.w.update(None, self.vm, {key: None})
        self.w.update(f"unassigned IP {record.address} (not hookpack's: kept)", record,
                      {"assigned_object_type": None, "assigned_object_id": None})
        self.assigned[id(record)] = None

    def release_all(self) -> None:
        """Before the VM goes: its primary IPs cleared, hookpack's addresses deleted,
        everyone else's unassigned."""
        clear = {k: None for k in ("primary_ip4", "primary_ip6")
                 if getattr(self.vm, k, None) is not None}
        if clear:
            self.w.update(None, self.vm, clear)
        self.drop_unwanted_addresses()
        for iface in self.interfaces.values():
            self.release(iface)

    def set_primaries(self) -> None:
        diff = {}
        for version, key in ((4, "primary_ip4"), (6, "primary_ip6")):
            record = self.primary.get(version)
            if record is not None and (record.id is None
                                       or ref_id(getattr(self.vm, key, None)) != record.id):
                diff[key] = record.id
        if diff:
            self.w.update(f"set {', '.join(sorted(diff))} of VM {self.vm.name}", self.vm, diff)


def address_of(record: Any) -> str:
    try:
        return str(ipaddress.ip_interface(str(record.address)).ip)
    except ValueError:
        return ""


def holder(record: Any) -> str:
    """What an IP record is assigned to, as "VM web1 eth0" or "device sw1 xe-0/0/1"."""
    obj = getattr(record, "assigned_object", None)
    iface = str(getattr(obj, "name", "") or "?")
    vm = getattr(obj, "virtual_machine", None)
    if vm is not None:
        return f"VM {getattr(vm, 'name', vm)} {iface}"
    device = getattr(obj, "device", None)
    if device is not None:
        return f"device {getattr(device, 'name', device)} {iface}"
    return f"{getattr(record, 'assigned_object_type', '?')} {iface}"

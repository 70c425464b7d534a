"""A real NetBox (vmtestbed.netbox) as the tests see it: one cluster, plain REST calls.

Reads go over the REST API with the standard library (vmtestbed.netbox.api), not
through pynetbox, which the action under test uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vmtestbed import netbox as nbserver


class NetBoxView:
    """One test's cluster in the shared NetBox, read and written over plain REST."""

    def __init__(self, server: Any, cluster: str, wrap: Sequence[str] = ()) -> None:
        self.server, self.cluster, self.wrap = server, cluster, list(wrap)
        ctype = self.one("virtualization/cluster-types", slug="hookpack-tests") or self.post(
            "virtualization/cluster-types", name="hookpack-tests", slug="hookpack-tests")
        self.cluster_id = self.post("virtualization/clusters", name=cluster,
                                    type=ctype["id"])["id"]

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        return nbserver.api(self.server, method, f"/api/{path}", body, wrap=self.wrap)

    def get(self, endpoint: str, **filters: Any) -> list[dict[str, Any]]:
        query = "&".join(f"{k}={v}" for k, v in {**filters, "limit": 1000}.items())
        return list(self.rest("GET", f"{endpoint}/?{query}")["results"])

    def one(self, endpoint: str, **filters: Any) -> dict[str, Any] | None:
        found = self.get(endpoint, **filters)
        assert len(found) <= 1, found
        return found[0] if found else None

    def post(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        return dict(self.rest("POST", f"{endpoint}/", fields))

    def patch(self, endpoint: str, oid: int, **fields: Any) -> dict[str, Any]:
        return dict(self.rest("PATCH", f"{endpoint}/{oid}/", fields))

    def vm(self, name: str) -> dict[str, Any] | None:
        return self.one("virtualization/virtual-machines", name=name,
                        cluster_id=self.cluster_id)

    def interfaces(self, vm: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {i["name"]: i for i in self.get("virtualization/interfaces",
                                               virtual_machine_id=vm["id"])}

    def ips(self, vm: dict[str, Any]) -> dict[str, str]:
        """address -> interface name, of the VM's IP addresses."""
        return {r["address"]: r["assigned_object"]["name"] for r in
                self.get("ipam/ip-addresses", virtual_machine_id=vm["id"])}

    def ip(self, address: str) -> dict[str, Any] | None:
        return self.one("ipam/ip-addresses", address=address)

    def macs(self, vm: dict[str, Any]) -> dict[str, str]:
        """MAC -> interface name, of the VM's MAC address objects."""
        return {m["mac_address"]: m["assigned_object"]["name"] for m in
                self.get("dcim/mac-addresses", virtual_machine_id=vm["id"])}

"""A FAKE NetBox REST API, for tests only.

NetBox itself (Django + PostgreSQL + Redis) cannot run on this machine, so the
netbox action and the policy check are tested against this small threaded
http.server on 127.0.0.1. It implements only the endpoints and filters pynetbox uses
for hookpack's calls, shaped like NetBox 4.1's JSON (nested objects with id/url,
choice fields as {value, label}, paginated lists, token auth, 201/204 codes), and
answers 400 to a filter it does not know so a typo in hookpack cannot pass unnoticed.
Whatever it does not implement, a real NetBox may do differently: that part is not
proven by these tests.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Fields a real NetBox always returns (null when unset).
DEFAULTS = {
    "virtualization/virtual-machines": {"status": "active", "cluster": None, "vcpus": None,
                                        "memory": None, "disk": None, "primary_ip4": None,
                                        "primary_ip6": None, "comments": ""},
    "virtualization/interfaces": {"mac_address": None, "enabled": True},
    "ipam/ip-addresses": {"status": "active", "assigned_object_type": None,
                          "assigned_object_id": None},
}
ENDPOINTS = {
    "virtualization/virtual-machines": {"name", "id", "cluster_id"},
    "virtualization/interfaces": {"virtual_machine_id", "name", "id"},
    "virtualization/clusters": {"name", "id"},
    "ipam/ip-addresses": {"virtual_machine_id", "vminterface_id", "address", "id"},
    "extras/tags": {"slug", "name", "id"},
}
PAGING = {"limit", "offset", "brief", "ordering"}


class FakeNetBox:
    def __init__(self, token: str = "0123456789abcdef0123456789abcdef01234567") -> None:  # noqa: S107
        self.token = token
        self.store: dict[str, dict[int, dict[str, Any]]] = {e: {} for e in ENDPOINTS}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.delay = 0.0  # seconds to stall every answer (timeout tests)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.block_on_close = False  # stalled answers must not hold up teardown
        self.server.handle_error = lambda request, address: None  # client gave up: fine
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeNetBox:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- data ---------------------------------------------------------------------------
    def add(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        with self.lock:
            return self._insert(endpoint, fields)

    def _insert(self, endpoint: str, fields: dict[str, Any]) -> dict[str, Any]:
        obj = {"id": next(self.ids), **DEFAULTS.get(endpoint, {}), **fields}
        obj["tags"] = [t if isinstance(t, int) else t.get("id") or self._tag_by(t)
                       for t in obj.get("tags", [])]
        self.store[endpoint][obj["id"]] = obj
        return obj

    def _tag_by(self, ref: dict[str, Any]) -> int:
        for tag in self.store["extras/tags"].values():
            if ref.get("slug") in (tag["slug"], None) and ref.get("name") in (tag["name"], None):
                return int(tag["id"])
        raise KeyError(ref)

    def objects(self, endpoint: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self.render(endpoint, o) for o in self.store[endpoint].values()]

    def _url(self, endpoint: str, oid: int) -> str:
        return f"{self.url}/api/{endpoint}/{oid}/"

    def render(self, endpoint: str, obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(obj)
        out["url"] = self._url(endpoint, obj["id"])
        out["tags"] = [{"id": t, "url": self._url("extras/tags", t),
                        "name": self.store["extras/tags"][t]["name"],
                        "slug": self.store["extras/tags"][t]["slug"]} for t in obj.get("tags", [])
                       if t in self.store["extras/tags"]]
        if "status" in obj:
            out["status"] = {"value": obj["status"], "label": obj["status"].title()}
        if endpoint == "virtualization/virtual-machines":
            cluster = self.store["virtualization/clusters"].get(obj.get("cluster"))
            out["cluster"] = cluster and {"id": cluster["id"], "name": cluster["name"],
                                          "url": self._url("virtualization/clusters",
                                                           cluster["id"])}
            if out.get("vcpus") is not None:
                out["vcpus"] = f"{float(out['vcpus']):.2f}"  # NetBox: a decimal string
            for key in ("primary_ip4", "primary_ip6"):
                ip = self.store["ipam/ip-addresses"].get(obj.get(key))
                out[key] = ip and {"id": ip["id"], "address": ip["address"],
                                   "url": self._url("ipam/ip-addresses", ip["id"])}
        if endpoint == "virtualization/interfaces":
            vm = self.store["virtualization/virtual-machines"].get(obj.get("virtual_machine"))
            out["virtual_machine"] = vm and {"id": vm["id"], "name": vm["name"], "url": self._url(
                "virtualization/virtual-machines", vm["id"])}
        if endpoint == "ipam/ip-addresses":
            iface = self.store["virtualization/interfaces"].get(obj.get("assigned_object_id"))
            out["assigned_object"] = iface and {
                "id": iface["id"], "name": iface["name"],
                "url": self._url("virtualization/interfaces", iface["id"])}
        return out

    def _matches(self, endpoint: str, obj: dict[str, Any], key: str, value: str) -> bool:
        if key == "virtual_machine_id" and endpoint == "ipam/ip-addresses":
            iface = self.store["virtualization/interfaces"].get(obj.get("assigned_object_id"))
            return bool(iface) and str(iface["virtual_machine"]) == value
        if key == "vminterface_id":
            return str(obj.get("assigned_object_id")) == value
        field = {"virtual_machine_id": "virtual_machine", "cluster_id": "cluster"}.get(key, key)
        return str(obj.get(field)) == value

    # -- HTTP ---------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("API-Version", "4.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self) -> tuple[str, int | None, dict[str, str]] | None:
                parsed = urllib.parse.urlsplit(self.path)
                path = parsed.path.strip("/").removeprefix("api").strip("/")
                query = dict(urllib.parse.parse_qsl(parsed.query))
                for endpoint in ENDPOINTS:
                    if path == endpoint:
                        return endpoint, None, query
                    if path.startswith(endpoint + "/"):
                        rest = path[len(endpoint) + 1:]
                        if rest.isdigit():
                            return endpoint, int(rest), query
                return None

            def _handle(self, method: str) -> None:
                fake.log.append((method, self.path))
                if fake.delay:
                    threading.Event().wait(fake.delay)
                if self.headers.get("Authorization") != f"Token {fake.token}":
                    return self._send(403, {"detail": "Invalid token"})
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = urllib.parse.urlsplit(self.path).path
                if method == "GET" and path in ("/api/", "/api"):
                    return self._send(200, {e.split("/")[0]: f"{fake.url}/api/{e.split('/')[0]}/"
                                            for e in ENDPOINTS})
                if method == "GET" and path.rstrip("/") == "/api/status":
                    return self._send(200, {"netbox-version": "4.1.0-fake"})
                route = self._route()
                if route is None:
                    return self._send(404, {"detail": "Not found."})
                endpoint, oid, query = route
                with fake.lock:
                    return self._dispatch(method, endpoint, oid, query, body)

            def _dispatch(self, method: str, endpoint: str, oid: int | None,
                          query: dict[str, str], body: Any) -> None:
                table = fake.store[endpoint]
                if oid is None and method == "GET":
                    unknown = set(query) - ENDPOINTS[endpoint] - PAGING
                    if unknown:
                        return self._send(400, {k: ["unknown filter (fake)"] for k in unknown})
                    found = [fake.render(endpoint, o) for o in table.values()
                             if all(fake._matches(endpoint, o, k, v) for k, v in query.items()
                                    if k not in PAGING)]
                    return self._send(200, {"count": len(found), "next": None,
                                            "previous": None, "results": found})
                if oid is None and method == "POST":
                    if endpoint == "virtualization/virtual-machines" and any(
                            o["name"] == body.get("name") for o in table.values()):
                        return self._send(400, {"name": ["already exists (fake)"]})
                    obj = fake._insert(endpoint, dict(body))
                    return self._send(201, fake.render(endpoint, obj))
                if oid is None or oid not in table:
                    return self._send(404, {"detail": "Not found."})
                if method == "GET":
                    return self._send(200, fake.render(endpoint, table[oid]))
                if method in ("PATCH", "PUT"):
                    update = dict(body)
                    if "tags" in update:
                        update["tags"] = [t if isinstance(t, int) else fake._tag_by(t)
                                          for t in update["tags"]]
                    table[oid].update(update)
                    return self._send(200, fake.render(endpoint, table[oid]))
                if method == "DELETE":
                    del table[oid]
                    if endpoint == "virtualization/virtual-machines":  # cascade like NetBox
                        ifaces = fake.store["virtualization/interfaces"]
                        for iid in [i for i, o in ifaces.items() if o["virtual_machine"] == oid]:
                            del ifaces[iid]
                            for ip in fake.store["ipam/ip-addresses"].values():
                                if ip.get("assigned_object_id") == iid:
                                    ip["assigned_object_id"] = None
                                    ip["assigned_object_type"] = None
                    return self._send(204)
                return self._send(405, {"detail": "Method not allowed."})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler

"""A FAKE NetBox REST API that can stall, for the fault tests only.

What NetBox itself decides is tested against a real NetBox 4.7 (vmtestbed.netbox,
tests/actions/test_netbox.py). A NetBox that accepts the connection and then does not
answer is what a real one does not do on demand: this small threaded http.server on
127.0.0.1 answers the read-only lookups the netbox action and the policy check make
first (clusters and virtual machines by name and cluster, token auth, paginated lists,
400 on a filter it does not know) and stalls every answer by ``delay`` seconds.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FILTERS = {
    "virtualization/virtual-machines": {"name", "id", "cluster_id"},
    "virtualization/clusters": {"name", "id"},
}
PAGING = {"limit", "offset", "brief", "ordering"}


class FakeNetBox:
    def __init__(self, token: str = "0123456789abcdef0123456789abcdef01234567") -> None:  # noqa: S107
        self.token = token
        self.store: dict[str, dict[int, dict[str, Any]]] = {e: {} for e in FILTERS}
        self.ids = itertools.count(1)
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

    def add(self, endpoint: str, **fields: Any) -> dict[str, Any]:
        obj = {"id": next(self.ids), **fields}
        self.store[endpoint][obj["id"]] = obj
        return obj

    def found(self, endpoint: str, query: dict[str, str]) -> list[dict[str, Any]]:
        field = {"cluster_id": "cluster"}
        return [{**o, "url": f"{self.url}/api/{endpoint}/{o['id']}/"}
                for o in self.store[endpoint].values()
                if all(str(o.get(field.get(k, k))) == v for k, v in query.items()
                       if k not in PAGING)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("API-Version", "4.7")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if fake.delay:
                    threading.Event().wait(fake.delay)
                if self.headers.get("Authorization") != f"Token {fake.token}":
                    return self._send(403, {"detail": "Invalid token"})
                parsed = urllib.parse.urlsplit(self.path)
                endpoint = parsed.path.strip("/").removeprefix("api").strip("/")
                query = dict(urllib.parse.parse_qsl(parsed.query))
                if endpoint not in FILTERS:
                    return self._send(404, {"detail": "Not found (fake: lookups only)."})
                unknown = set(query) - FILTERS[endpoint] - PAGING
                if unknown:
                    return self._send(400, {k: ["unknown filter (fake)"] for k in unknown})
                found = fake.found(endpoint, query)
                return self._send(200, {"count": len(found), "next": None, "previous": None,
                                        "results": found})

        return Handler

"""Local HTTP receivers that check the exact requests Slack and Grafana document.

Real HTTP servers (threaded http.server on 127.0.0.1, ephemeral ports), not mocks of
the client. Each one validates what it gets (method, path, headers, JSON shape; the
webhook also the HMAC), answers 400 to anything malformed, and can be switched to
answer 500, 404 (a permanent refusal), 429 with Retry-After, to hang, to record a
request and then hang (the sender times out although
the receiver got it: the case that makes duplicates), or to refuse connections
(server closed, port free). Like a real consumer, each keeps `applied`, the events
it acted on, deduplicated by the X-Hookpack-Idempotency-Key header.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLACK_PATH = "/services/T0HOOKPACK/B0HOOKPACK/sEcReTtOkEn123"
GRAFANA_TOKEN = "glsa_sEcReTgRaFaNaToKeN_0123"  # noqa: S105 - a test token, known to the receivers
HMAC_KEY = "hmac-sEcReT-kEy-456"
GRAFANA_KEYS = {"time", "timeEnd", "tags", "text", "dashboardUID", "panelId"}


class Receiver:
    def __init__(self, kind: str, host: str = "127.0.0.1", journal: str = "") -> None:
        self.kind = kind
        self.host = host
        self.journal = journal  # also append each valid request here (JSON lines)
        self.mode = "ok"
        self.retry_after = "1"  # the Retry-After header of mode "throttle"
        self.received: list[tuple[str, Any]] = []  # every valid request: (key, body)
        self.applied: dict[str, Any] = {}  # what a deduplicating consumer acted on
        self.invalid: list[str] = []
        self.refused = 0  # valid requests answered 404 (reject) or 429 (throttle)
        self.release = threading.Event()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self.start()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def do_GET(self) -> None:
                self.send_error(405)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def refuse(self) -> None:
        """Close the server: connections to its port are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        self.release.set()
        self.refuse()

    @property
    def url(self) -> str:
        path = {"slack": SLACK_PATH, "grafana": "", "webhook": "/hooks/ganeti"}[self.kind]
        return f"http://{self.host}:{self.port}{path}"

    # -- requests -------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length", "0"))
        raw = req.rfile.read(length)
        problem = self._check(req, raw)
        if problem:
            with self._lock:
                self.invalid.append(problem)
            self._reply(req, 400, b"invalid_payload")
            return
        if self.mode == "hang":
            self.release.wait(30)
            return
        if self.mode == "error":
            self._reply(req, 500, b"internal error")
            return
        if self.mode == "reject":  # a permanent refusal (e.g. a removed channel/hook)
            with self._lock:
                self.refused += 1
            self._reply(req, 404, b"no_such_hook")
            return
        if self.mode == "throttle":
            with self._lock:
                self.refused += 1
            self._reply(req, 429, b"rate_limited", headers={"Retry-After": self.retry_after})
            return
        key = req.headers["X-Hookpack-Idempotency-Key"]
        body = json.loads(raw)
        with self._lock:
            self.received.append((key, body))
            self.applied.setdefault(key, body)
            if self.journal:
                with open(self.journal, "a") as out:
                    out.write(json.dumps({"kind": self.kind, "key": key, "body": body,
                                          "peer": req.client_address[0]}) + "\n")
        if self.mode == "record-then-hang":
            self.release.wait(30)
            return
        if self.kind == "slack":
            self._reply(req, 200, b"ok", "text/html")
        else:
            self._reply(req, 200, json.dumps({"message": "Annotation added", "id": len(
                self.received)}).encode())

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, body: bytes,
               ctype: str = "application/json", headers: dict[str, str] | None = None) -> None:
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        for name, value in (headers or {}).items():
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _check(self, req: BaseHTTPRequestHandler, raw: bytes) -> str:
        if req.headers.get("Content-Type") != "application/json":
            return f"content type {req.headers.get('Content-Type')!r}"
        if not req.headers.get("X-Hookpack-Idempotency-Key"):
            return "no idempotency key"
        try:
            body = json.loads(raw)
        except ValueError:
            return "body is not JSON"
        if not isinstance(body, dict):
            return "body is not an object"
        return getattr(self, f"_check_{self.kind}")(req, raw, body)

    @staticmethod
    def _check_slack(req: BaseHTTPRequestHandler, raw: bytes, body: dict[str, Any]) -> str:
        # api.slack.com/messaging/webhooks: POST application/json {"text": "..."}
        if req.path != SLACK_PATH:
            return f"slack: wrong path {req.path}"
        if set(body) != {"text"} or not isinstance(body["text"], str) or not body["text"]:
            return f"slack: body must be {{'text': str}}, got keys {sorted(body)}"
        return ""

    @staticmethod
    def _check_grafana(req: BaseHTTPRequestHandler, raw: bytes, body: dict[str, Any]) -> str:
        # grafana.com/docs/grafana/latest/developers/http_api/annotations/
        if req.path != "/api/annotations":
            return f"grafana: wrong path {req.path}"
        if req.headers.get("Authorization") != f"Bearer {GRAFANA_TOKEN}":
            return "grafana: missing or wrong bearer token"
        if not set(body) <= GRAFANA_KEYS:
            return f"grafana: unknown keys {sorted(set(body) - GRAFANA_KEYS)}"
        if not isinstance(body.get("time"), int) or isinstance(body.get("time"), bool):
            return "grafana: time must be epoch milliseconds (int)"
        if "timeEnd" in body and (not isinstance(body["timeEnd"], int)
                                  or body["timeEnd"] < body["time"]):
            return "grafana: timeEnd must be int >= time"
        if not (isinstance(body.get("tags"), list)
                and all(isinstance(t, str) for t in body["tags"])):
            return "grafana: tags must be a list of strings"
        if not isinstance(body.get("text"), str):
            return "grafana: text must be a string"
        return ""

    @staticmethod
    def _check_webhook(req: BaseHTTPRequestHandler, raw: bytes, body: dict[str, Any]) -> str:
        expected = "sha256=" + hmac.new(HMAC_KEY.encode(), raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(req.headers.get("X-Hookpack-Signature", ""), expected):
            return "webhook: bad signature"
        if body.get("id") != req.headers.get("X-Hookpack-Idempotency-Key"):
            return "webhook: id differs from the idempotency key"
        return ""


def main() -> None:
    """``python3 receivers.py HOST JOURNAL [KIND,...]``: the receivers (default: all
    three) on HOST until killed; prints their URLs as JSON (the lab test and the Ganeti
    demo run this inside a node's namespace)."""
    import sys
    import time

    host, journal = sys.argv[1], sys.argv[2]
    kinds = sys.argv[3].split(",") if len(sys.argv) > 3 else ["slack", "grafana", "webhook"]
    made = {kind: Receiver(kind, host, journal) for kind in kinds}
    print(json.dumps({kind: r.url for kind, r in made.items()}), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

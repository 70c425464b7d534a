"""PowerDNS Authoritative HTTP API: read and patch RRsets, with short timeouts.

Standard library only (http.client), imported by the actions that need it inside
their run(), never at module top level of an action. Every request carries its own
timeout; the caller bounds it further by the hook's deadline.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hookpack.errors import ActionError

# Who owns an RRset: PowerDNS keeps comments per RRset (name, type). hookpack marks
# every RRset it writes with one comment: account "hookpack", content
# "hookpack:<instance name>". RRsets without that mark are never changed or deleted.
OWNER_ACCOUNT = "hookpack"


def owner_mark(instance: str) -> str:
    return f"hookpack:{instance}"


class PowerDnsError(ActionError):
    """The API answered with an error."""


class PowerDnsUnavailable(PowerDnsError):
    """The API could not be reached in time (refused, timeout, reset)."""


@dataclass(frozen=True)
class RRset:
    name: str  # absolute, with the trailing dot
    type: str
    ttl: int
    contents: frozenset[str]
    comments: tuple[Mapping[str, Any], ...] = field(default=())

    def owner(self) -> str | None:
        """The instance hookpack wrote this RRset for, or None if hookpack did not."""
        for comment in self.comments:
            content = str(comment.get("content", ""))
            if comment.get("account") == OWNER_ACCOUNT and content.startswith("hookpack:"):
                return content.removeprefix("hookpack:")
        return None


@dataclass(frozen=True)
class Change:
    """One RRset change for a PATCH: REPLACE (with contents) or DELETE."""

    zone: str
    name: str
    type: str
    changetype: str
    contents: tuple[str, ...] = ()
    ttl: int = 0
    owner: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "type": self.type,
                                "changetype": self.changetype}
        if self.changetype == "REPLACE":
            body["ttl"] = self.ttl
            body["records"] = [{"content": c, "disabled": False} for c in self.contents]
            body["comments"] = [{"content": owner_mark(self.owner), "account": OWNER_ACCOUNT}]
        return body

    def describe(self) -> str:
        if self.changetype == "DELETE":
            return f"deleted {self.type} {self.name.rstrip('.')}"
        return f"set {self.type} {self.name.rstrip('.')} -> {', '.join(self.contents)}"


class Client:
    """A tiny client for /api/v1/servers/<server_id>/zones."""

    def __init__(self, url: str, api_key: str, *, server_id: str = "localhost",
                 timeout: float = 2.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise PowerDnsError(f"PowerDNS API URL {url!r} is not an http(s) URL")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.api_key = api_key
        self.server_id = server_id
        self.timeout = timeout

    def _zone_path(self, zone: str) -> str:
        quoted = urllib.parse.quote(zone.replace("/", "=2F"), safe=".=-")
        sid = urllib.parse.quote(self.server_id, safe="")
        return f"{self.prefix}/api/v1/servers/{sid}/zones/{quoted}"

    def request(self, method: str, path: str, body: Any = None,
                timeout: float | None = None) -> tuple[int, Any]:
        timeout = self.timeout if timeout is None else timeout
        if timeout <= 0:
            raise PowerDnsUnavailable("no time left before the hook's deadline")
        cls = (http.client.HTTPSConnection if self.scheme == "https"
               else http.client.HTTPConnection)
        conn = cls(self.host, self.port, timeout=timeout)
        headers = {"X-API-Key": self.api_key, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except TimeoutError:
            raise PowerDnsUnavailable(
                f"PowerDNS API at {self.host}:{self.port} did not answer within "
                f"{timeout:.1f} s") from None
        except (OSError, http.client.HTTPException) as err:
            reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
            raise PowerDnsUnavailable(
                f"PowerDNS API at {self.host}:{self.port} unreachable: {reason}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if response.status >= 400:
            error = payload.get("error") if isinstance(payload, dict) else None
            raise PowerDnsError(f"PowerDNS API {method} {path}: HTTP {response.status}"
                                + (f": {error}" if error else ""))
        return response.status, payload

    def rrsets(self, zone: str, name: str, timeout: float | None = None) -> list[RRset]:
        """The RRsets of ``zone`` at ``name`` (all types)."""
        query = urllib.parse.urlencode({"rrset_name": name})
        _, payload = self.request("GET", f"{self._zone_path(zone)}?{query}", timeout=timeout)
        if not isinstance(payload, dict):
            raise PowerDnsError(f"PowerDNS API: zone {zone}: unexpected answer")
        found = []
        for item in payload.get("rrsets", []):
            # Older servers ignore rrset_name and return the whole zone: filter here.
            if item.get("name", "").lower() != name.lower():
                continue
            found.append(RRset(
                name=item["name"], type=item["type"], ttl=int(item.get("ttl", 0)),
                contents=frozenset(r["content"] for r in item.get("records", [])),
                comments=tuple(item.get("comments", []))))
        return found

    def patch(self, zone: str, changes: Iterable[Change], timeout: float | None = None) -> None:
        body = {"rrsets": [c.to_json() for c in changes]}
        if body["rrsets"]:
            self.request("PATCH", self._zone_path(zone), body, timeout=timeout)

    def create_zone(self, zone: str, nameservers: Iterable[str] = (),
                    timeout: float | None = None) -> None:
        """Create a Native zone (used by tests and `hookpack dns` setup)."""
        sid = urllib.parse.quote(self.server_id, safe="")
        self.request("POST", f"{self.prefix}/api/v1/servers/{sid}/zones",
                     {"name": zone, "kind": "Native", "nameservers": list(nameservers)},
                     timeout=timeout)

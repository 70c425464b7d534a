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
from typing import Any

from hookpack.errors import ActionError
from hookpack.record import field, record

# Who owns an RRset: PowerDNS keeps comments per RRset (name, type). hookpack marks
# every RRset it writes with one comment: account "hookpack", content
# "hookpack:<instance name>". RRsets without that mark are never changed or deleted.
#
# Backends that cannot store comments (LMDB: the API answers 422 "Hosting backend does
# not support editing comments."; the PowerDNS docs list comments for the generic SQL
# backends only) get the mark as a TXT record instead, at "_hookpack.<name>" (a
# metadata label as in RFC 8552, so the name's own records, TXT included, are not
# touched): "hookpack:<instance name>" marks the A, AAAA and PTR RRsets at <name> as
# hookpack's.
OWNER_ACCOUNT = "hookpack"
MARKER_LABEL = "_hookpack"
MANAGED_TYPES = ("A", "AAAA", "PTR")
COMMENT_BACKENDS = frozenset({"gsqlite3", "gmysql", "gpgsql", "godbc"})


def marker_name(name: str) -> str:
    return f"{MARKER_LABEL}.{name}"


def marker_content(instance: str) -> str:
    return f'"{owner_mark(instance)}"'


def owner_mark(instance: str) -> str:
    return f"hookpack:{instance}"


class PowerDnsError(ActionError):
    """The API answered with an error."""


class PowerDnsUnavailable(PowerDnsError):
    """The API could not be reached in time (refused, timeout, reset)."""


@record(frozen=True)
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


@record(frozen=True)
class Change:
    """One RRset change for a PATCH: REPLACE (with contents) or DELETE."""

    zone: str
    name: str
    type: str
    changetype: str
    contents: tuple[str, ...] = ()
    ttl: int = 0
    owner: str = ""

    def to_json(self, comments: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "type": self.type,
                                "changetype": self.changetype}
        if self.changetype == "REPLACE":
            body["ttl"] = self.ttl
            body["records"] = [{"content": c, "disabled": False} for c in self.contents]
            if comments:
                body["comments"] = [{"content": owner_mark(self.owner),
                                     "account": OWNER_ACCOUNT}]
        return body

    def describe(self) -> str:
        if self.changetype == "DELETE":
            return f"deleted {self.type} {self.name.rstrip('.')}"
        return f"set {self.type} {self.name.rstrip('.')} -> {', '.join(self.contents)}"


def _with_marks(rrsets: list[RRset], markers: list[RRset]) -> list[RRset]:
    """``rrsets`` with the owner each ``_hookpack.<name>`` TXT in ``markers`` names, as
    the comment a comment-storing backend would hold; the markers themselves left out."""
    owners: dict[str, str] = {}
    prefix = MARKER_LABEL + "."
    for marker in markers:
        if marker.type == "TXT" and marker.name.lower().startswith(prefix):
            for content in marker.contents:
                text = content.strip('"')
                if text.startswith("hookpack:"):
                    owners[marker.name[len(prefix):].lower()] = text.removeprefix("hookpack:")
    out = []
    for r in rrsets:
        if r.type == "TXT" and r.name.lower().startswith(prefix):
            continue
        owner = owners.get(r.name.lower()) if r.type in MANAGED_TYPES else None
        comments = ({"account": OWNER_ACCOUNT, "content": owner_mark(owner)},) if owner else ()
        out.append(RRset(r.name, r.type, r.ttl, r.contents, comments))
    return out


class Client:
    """A tiny client for /api/v1/servers/<server_id>/zones."""

    def __init__(self, url: str, api_key: str, *, server_id: str = "localhost",
                 timeout: float = 2.0, marks: str = "comments") -> None:
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
        self.marks = marks  # "comments" or "txt": how hookpack marks its RRsets

    def backends(self, timeout: float | None = None) -> list[str]:
        """The backends the server launched (its `launch` setting), e.g. ["lmdb"]."""
        sid = urllib.parse.quote(self.server_id, safe="")
        _, payload = self.request("GET", f"{self.prefix}/api/v1/servers/{sid}/config",
                                  timeout=timeout)
        for item in payload if isinstance(payload, list) else []:
            if isinstance(item, dict) and item.get("name") == "launch":
                return [b.strip().split(":")[0] for b in str(item.get("value", "")).split(",")
                        if b.strip()]
        return []

    def detect_marks(self, timeout: float | None = None) -> str:
        """"comments" when every launched backend stores comments, else "txt"."""
        launched = self.backends(timeout)
        self.marks = "comments" if launched and set(launched) <= COMMENT_BACKENDS else "txt"
        return self.marks

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
        """The RRsets of ``zone`` at ``name`` (all types), with hookpack's mark."""
        found = self._get(zone, name, timeout)
        if self.marks != "txt":
            return found
        return _with_marks(found, self._get(zone, marker_name(name), timeout))

    def zone_rrsets(self, zone: str, timeout: float | None = None) -> list[RRset]:
        """Every RRset of ``zone``, with hookpack's mark."""
        found = self._get(zone, None, timeout)
        return _with_marks(found, found) if self.marks == "txt" else found

    def _get(self, zone: str, name: str | None, timeout: float | None) -> list[RRset]:
        query = f"?{urllib.parse.urlencode({'rrset_name': name})}" if name else ""
        _, payload = self.request("GET", f"{self._zone_path(zone)}{query}", timeout=timeout)
        if not isinstance(payload, dict):
            raise PowerDnsError(f"PowerDNS API: zone {zone}: unexpected answer")
        found = []
        for item in payload.get("rrsets", []):
            # Older servers ignore rrset_name and return the whole zone: filter here.
            if name is not None and item.get("name", "").lower() != name.lower():
                continue
            found.append(RRset(
                name=item["name"], type=item["type"], ttl=int(item.get("ttl", 0)),
                contents=frozenset(r["content"] for r in item.get("records", [])),
                comments=tuple(item.get("comments", []))))
        return found

    def patch(self, zone: str, changes: Iterable[Change], timeout: float | None = None) -> None:
        changes = list(changes)
        body = {"rrsets": [c.to_json(self.marks != "txt") for c in changes]}
        if self.marks == "txt":
            body["rrsets"] += [m.to_json(False) for m in self._marker_changes(zone, changes,
                                                                              timeout)]
        if body["rrsets"]:
            self.request("PATCH", self._zone_path(zone), body, timeout=timeout)

    def _marker_changes(self, zone: str, changes: list[Change],
                        timeout: float | None) -> list[Change]:
        """The TXT marks going with ``changes``: set where hookpack writes a name, removed
        where the last of its RRsets at a name goes."""
        marks: list[Change] = []
        for name in dict.fromkeys(c.name for c in changes):
            here = [c for c in changes if c.name == name]
            written = [c for c in here if c.changetype == "REPLACE"]
            if written:
                marks.append(Change(zone, marker_name(name), "TXT", "REPLACE",
                                    (marker_content(written[0].owner),), written[0].ttl))
                continue
            deleted = {c.type for c in here}
            left = [r for r in self._get(zone, name, timeout)
                    if r.type in MANAGED_TYPES and r.type not in deleted]
            if not left:
                marks.append(Change(zone, marker_name(name), "TXT", "DELETE"))
        return marks

    def create_zone(self, zone: str, nameservers: Iterable[str] = (),
                    timeout: float | None = None) -> None:
        """Create a Native zone (used by tests and `hookpack dns` setup)."""
        sid = urllib.parse.quote(self.server_id, safe="")
        self.request("POST", f"{self.prefix}/api/v1/servers/{sid}/zones",
                     {"name": zone, "kind": "Native", "nameservers": list(nameservers)},
                     timeout=timeout)

"""A real PowerDNS Authoritative server (Debian's pdns-server + gsqlite3) for the tests
and the Ganeti demo.

Started on loopback (or an address inside a namespace, with ``wrap``) on free ports,
with its own config dir and a sqlite database created from the schema file the
Debian package ships; stopped by pid at teardown. :func:`api` and :func:`rrsets` talk to
its HTTP API from inside the namespace (standard library only: the demo runs without
hookpack installed); :meth:`Pdns.client` is hookpack's own client, for the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # hookpack is imported only by the tests' calls (client())
    from hookpack.adapters.powerdns import Client

PDNS_SERVER = "/usr/sbin/pdns_server"
SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


LMDB_BACKEND = Path("/usr/lib/x86_64-linux-gnu/pdns/liblmdbbackend.so")


def available(backend: str = "gsqlite3") -> str:
    """Why pdns cannot run here, or '' when it can."""
    if not Path(PDNS_SERVER).exists():
        return "pdns-server is not installed (apt-get install pdns-server)"
    if backend == "lmdb" and not LMDB_BACKEND.exists():
        return "pdns-backend-lmdb is not installed (scripts/apt-packages.txt)"
    if backend != "lmdb" and not SCHEMA.exists():
        return "pdns-backend-sqlite3 is not installed"
    return ""


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class Pdns:
    directory: Path
    address: str
    api_port: int
    dns_port: int
    api_key: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    def client(self) -> Client:
        from hookpack.adapters.powerdns import Client

        return Client(self.url, self.api_key, timeout=3.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None

    def rrsets(self, zone: str, name: str) -> dict[str, frozenset[str]]:
        return {r.type: r.contents for r in self.client().rrsets(zone, name)}


def write_config(directory: Path, address: str, api_port: int, dns_port: int,
                 api_key: str, backend: str = "gsqlite3") -> None:
    if backend == "lmdb":  # pdns-backend-lmdb: no comments (ownership by TXT records)
        storage = ["launch=lmdb", f"lmdb-filename={directory / 'pdns.lmdb'}"]
    else:
        db = directory / "pdns.sqlite3"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.executescript(SCHEMA.read_text())
            conn.commit()
        storage = ["launch=gsqlite3", f"gsqlite3-database={db}"]
    (directory / "pdns.conf").write_text("\n".join([
        *storage,
        "api=yes", f"api-key={api_key}",
        "webserver=yes", f"webserver-address={address}", f"webserver-port={api_port}",
        "webserver-allow-from=0.0.0.0/0,::/0",
        f"local-address={address}", f"local-port={dns_port}",
        f"socket-dir={directory}", "guardian=no", "daemon=no", "disable-syslog=yes",
        "loglevel=3", "security-poll-suffix=", "",
    ]))


@contextlib.contextmanager
def running_pdns(directory: Path, *, address: str = "127.0.0.1",
                 wrap: Sequence[str] = (), api_port: int | None = None,
                 dns_port: int | None = None, api_key: str = "test-api-key-123",
                 backend: str = "gsqlite3") -> Iterator[Pdns]:
    """Start pdns_server (optionally under ``wrap``, e.g. ip netns exec NS) and wait for it."""
    directory.mkdir(parents=True, exist_ok=True)
    server = Pdns(directory, address, api_port or free_port(), dns_port or free_port(),
                  api_key)
    write_config(directory, address, server.api_port, server.dns_port, api_key, backend)
    log = (directory / "pdns.log").open("wb")
    server.process = subprocess.Popen(
        [*wrap, PDNS_SERVER, f"--config-dir={directory}"], stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(server, wrap)
        yield server
    finally:
        server.stop()
        log.close()


def _wait_ready(server: Pdns, wrap: Sequence[str]) -> None:
    # generous: on a loaded CI machine pdns's first API answer has taken over 15 s
    end = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < end:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError("pdns_server exited: "
                               + (server.directory / "pdns.log").read_text()[-2000:])
        try:
            if wrap:
                probe = subprocess.run([*wrap, "python3", "-c", (
                    "import socket; socket.create_connection"
                    f"(({server.address!r}, {server.api_port}), 1).close()")],
                    capture_output=True, timeout=5)
                if probe.returncode == 0:
                    return
            else:
                url = server.url + "/api/v1/servers/localhost"  # http to our own server
                req = urllib.request.Request(url, headers={"X-API-Key": server.api_key})  # noqa: S310
                urllib.request.urlopen(req, timeout=5).close()  # noqa: S310
                return
        except (OSError, subprocess.TimeoutExpired) as err:  # URLError is an OSError
            last = err
        time.sleep(0.2)
    log = (server.directory / "pdns.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"pdns_server did not come up in 60 s: {last}\npdns.log:\n{log}")


_API_SCRIPT = (
    "import json, sys, urllib.request\n"
    "method, url, key, body = sys.argv[1:5]\n"
    "req = urllib.request.Request(url, method=method, headers={'X-API-Key': key, "
    "'Content-Type': 'application/json'}, data=body.encode() if body else None)\n"
    "raw = urllib.request.urlopen(req, timeout=5).read()\n"
    "print(raw.decode() or 'null')\n")


def api(server: Pdns, method: str, path: str, body: object = None,
        wrap: Sequence[str] = ()) -> Any:
    """One PowerDNS API call, made under ``wrap`` (inside the server's namespace)."""
    r = subprocess.run([*wrap, "python3", "-c", _API_SCRIPT, method, server.url + path,
                        server.api_key, json.dumps(body) if body is not None else ""],
                       capture_output=True, text=True, timeout=30, check=False,
                       stdin=subprocess.DEVNULL)
    if r.returncode:
        raise RuntimeError(f"PowerDNS API {method} {path}: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout)


def rrsets(server: Pdns, zone: str, name: str,
           wrap: Sequence[str] = ()) -> dict[str, set[str]]:
    """``name``'s records in ``zone`` as PowerDNS serves them: type -> contents."""
    data = api(server, "GET", f"/api/v1/servers/localhost/zones/{zone}?rrset_name={name}",
               wrap=wrap)
    return {r["type"]: {x["content"] for x in r["records"]} for r in data["rrsets"]
            if r["name"] == name}

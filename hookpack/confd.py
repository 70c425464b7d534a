"""Ganeti's confd, asked for one value of the cluster configuration from any node.

Why confd: Ganeti runs no hook for tag operations, so a reconcile that wants an
instance's *current* tags must ask Ganeti. ``gnt-instance list`` works on the master
only (it talks to the master's query socket) and RAPI may require credentials; confd
(UDP 1814) runs on every master candidate, answers from the configuration in memory
in about a millisecond, and any node can ask it: the request is signed with the
cluster's HMAC key (``<ganeti data dir>/hmac.key``, on every node, root-only), the
master candidates' addresses are in ``ssconf_master_candidates_ips``.

Protocol (Ganeti's lib/confd, src/Ganeti/Confd): a datagram ``plj0`` + JSON
``{"msg": <request JSON>, "salt": <now>, "hmac": HMAC-SHA1(key, salt + msg)}``; the
request ``{"protocol": 1, "type": 10 (CONFIG_QUERY), "query": <RFC 6901 JSON pointer
into config.data>, "rsalt": <uuid>}``; the answer is signed the same way with the
request's rsalt as its salt: ``{"protocol": 1, "status": 0, "answer": ..., "serial":
n}``. Every candidate is asked at once; among the valid answers within the deadline
the highest serial (the newest configuration) wins.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hookpack.record import record

MAGIC = b"plj0"
PORT = 1814
REQ_CONFIG_QUERY = 10
STATUS_OK = 0
GRACE = 0.1  # seconds the other candidates get once every path has an answer


class ConfdError(Exception):
    """No usable answer (no key, no candidates, no valid reply in time)."""


@record(frozen=True)
class Answer:
    value: Any
    serial: int
    peer: str


def _sign(key: bytes, msg: str, salt: str) -> str:
    import hashlib  # here, not at the top: `shaping apply` outside a cluster imports
    import hmac  # this module only to learn that no confd is there

    return hmac.new(key, (salt + msg).encode(), hashlib.sha1).hexdigest()


def pack(path: str, key: bytes, rsalt: str, now: float) -> bytes:
    msg = json.dumps({"protocol": 1, "type": REQ_CONFIG_QUERY, "query": path,
                      "rsalt": rsalt})
    salt = f"{int(now)}"
    return MAGIC + json.dumps({"msg": msg, "salt": salt,
                               "hmac": _sign(key, msg, salt)}).encode()


def unpack(data: bytes, key: bytes, rsalt: str) -> dict[str, Any] | None:
    """The reply to our request, verified; None for anything else."""
    if not data.startswith(MAGIC):
        return None
    try:
        signed = json.loads(data[len(MAGIC):])
        msg, salt, mac = signed["msg"], signed["salt"], signed["hmac"]
    except (ValueError, KeyError, TypeError):
        return None
    if salt != rsalt or not isinstance(msg, str) or not isinstance(mac, str):
        return None
    import hmac

    if not hmac.compare_digest(_sign(key, msg, salt), mac):
        return None
    try:
        reply = json.loads(msg)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def candidates(data_dir: Path) -> list[str]:
    try:
        text = (data_dir / "ssconf_master_candidates_ips").read_text()
    except OSError as err:
        raise ConfdError(f"cannot read {data_dir}/ssconf_master_candidates_ips: "
                         f"{err.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_key(data_dir: Path) -> bytes:
    try:
        # as Ganeti reads it: the whole file, its newline included
        return (data_dir / "hmac.key").read_bytes()
    except OSError as err:
        raise ConfdError(f"cannot read the confd key {data_dir}/hmac.key: "
                         f"{err.strerror}") from None


def query(path: str, data_dir: Path, *, timeout: float = 1.0) -> Answer:
    """The value at ``path`` (a JSON pointer into config.data), newest serial wins."""
    return query_many([path], data_dir, timeout=timeout)[path]


def query_many(paths: list[str], data_dir: Path, *, timeout: float = 1.0
               ) -> dict[str, Answer]:
    """Many values at once: every request goes to every candidate in one burst, the
    answers are matched by their salt. Raises when a path got no valid answer."""
    key = read_key(data_dir)
    peers = candidates(data_dir)
    if not peers:
        raise ConfdError("no master candidate listed in ssconf_master_candidates_ips")
    import select
    import socket
    import uuid

    now = time.time()
    salts = {str(uuid.uuid4()): path for path in dict.fromkeys(paths)}
    packets = {rsalt: pack(path, key, rsalt, now) for rsalt, path in salts.items()}
    deadline = time.monotonic() + timeout
    best: dict[str, Answer] = {}
    errors: list[str] = []
    socks: dict[socket.socket, str] = {}
    pending = {(peer, rsalt) for peer in peers for rsalt in salts}
    try:
        for peer in peers:
            family = socket.AF_INET6 if ":" in peer else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            socks[sock] = peer
            try:
                sock.connect((peer, PORT))
                for packet in packets.values():
                    sock.send(packet)
            except OSError as err:
                errors.append(f"{peer}: {err.strerror}")
                pending -= {(peer, r) for r in salts}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(socks), [], [], left)
            for sock in ready:
                peer = socks[sock]
                try:
                    data = sock.recv(65535)
                except OSError as err:
                    errors.append(f"{peer}: {err.strerror}")
                    pending -= {(peer, r) for r in salts}
                    continue
                rsalt = _salt_of(data)
                if rsalt not in salts or (peer, rsalt) not in pending:
                    continue
                reply = unpack(data, key, rsalt)
                if reply is None:
                    continue  # not signed by the cluster: ignore
                pending.discard((peer, rsalt))
                path = salts[rsalt]
                if reply.get("status") != STATUS_OK:
                    errors.append(f"{peer}: {path}: status {reply.get('status')} "
                                  f"({reply.get('answer')})")
                    continue
                serial = int(reply.get("serial") or 0)
                if path not in best or serial > best[path].serial:
                    best[path] = Answer(reply.get("answer"), serial, peer)
            if len(best) == len(salts):
                # every path answered: the other candidates get a short grace to answer
                # with a newer serial, not the whole timeout (one may be down)
                deadline = min(deadline, time.monotonic() + GRACE)
    finally:
        for sock in socks:
            sock.close()
    missing = [path for path in salts.values() if path not in best]
    if missing:
        why = "; ".join(errors[:3]) or f"no answer from {', '.join(peers)} in {timeout:.1f} s"
        raise ConfdError(f"confd query {missing[0]}: {why}")
    return best


def _salt_of(data: bytes) -> str:
    try:
        salt = json.loads(data[len(MAGIC):]).get("salt")
    except (ValueError, AttributeError):
        return ""
    return salt if isinstance(salt, str) else ""


def instance_uuid(kvm_dir: Path, instance: str) -> str | None:
    """The instance's UUID from Ganeti's KVM runtime file (``-uuid`` on QEMU's command
    line, ``<kvm_dir>/conf/<instance>.runtime``); None when not found."""
    try:
        runtime = json.loads((kvm_dir / "conf" / f"{instance}.runtime").read_text())
        cmd = runtime[0]
        value = cmd[cmd.index("-uuid") + 1]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def instance_tags(kvm_dir: Path, data_dir: Path, instances: list[str], *,
                  timeout: float = 1.0) -> tuple[dict[str, list[str]], list[str]]:
    """The instances' current tags from Ganeti's configuration through confd:
    (instance -> tags, notes about those that could not be asked)."""
    notes: list[str] = []
    paths: dict[str, str] = {}
    for name in instances:
        uid = instance_uuid(kvm_dir, name)
        if uid is None:
            notes.append(f"{name}: no UUID in {kvm_dir}/conf/{name}.runtime")
        else:
            paths[name] = f"/instances/{uid}/tags"
    if not paths:
        return {}, notes
    answers = query_many(list(paths.values()), data_dir, timeout=timeout)
    out: dict[str, list[str]] = {}
    for name, path in paths.items():
        value = answers[path].value
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            out[name] = list(value)
        else:
            notes.append(f"{name}: confd answered {str(value)[:60]!r} for its tags")
    return out, notes


def in_cluster(data_dir: Path) -> bool:
    """Whether this node belongs to a cluster (confd key and candidate list present)."""
    return (data_dir / "hmac.key").exists() and \
        (data_dir / "ssconf_master_candidates_ips").exists()

"""What a migration or failover is, when it started, and the event that announces it.

The pre phase only records the start (state_dir/announce/starts/<instance>--<hpath>):
nothing is sent, so each migration yields exactly one message per sink, sent from the
post phase with both ends of the region. Ganeti runs post hooks only when the
operation succeeded (shared/reference/ganeti-hooks.md), so a failed migration leaves
its start record behind: the next pre phase of that instance replaces it, and records
older than ``start_max_age`` are removed by every run and by ``outbox flush``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from hookpack.env import HookEnv
from hookpack.errors import BadInput
from hookpack.outbox import now_ms
from hookpack.record import record
from hookpack.validate import instance_name

KINDS = ("live-migration", "migration", "failover")


@record(frozen=True)
class Move:
    kind: str  # one of KINDS
    instance: str
    source: str
    target: str


def classify(env: HookEnv, settings: dict[str, Any] | Any) -> tuple[Move | None, str]:
    """The move this hook is about, or None and why it is not announced."""
    values = env.pre.values
    if env.hpath == "instance-migrate":
        if _true(values.get("MIGRATE_CLEANUP")):
            return None, "migration cleanup run, not a migration"
        live = _true(values.get("MIGRATE_LIVE"))
        kind = "live-migration" if live else "migration"
        if settings["migrations"] == "none" or (settings["migrations"] == "live" and not live):
            return None, f"{kind.replace('-', ' ')} not announced (migrations = " \
                         f"{settings['migrations']!r})"
    elif env.hpath == "instance-failover":
        if _true(values.get("FAILOVER_CLEANUP")):
            return None, "failover cleanup run, not a failover"
        kind = "failover"
        if not settings["failovers"]:
            return None, "failover not announced (failovers = false)"
    else:
        return None, f"{env.hpath} is not a migration or failover"
    if env.instance is None:
        raise BadInput("no GANETI_INSTANCE_NAME in the environment")
    source = values.get("OLD_PRIMARY", "")
    target = values.get("NEW_PRIMARY", "")
    try:
        nodes = (instance_name(source), instance_name(target))
    except BadInput:
        raise BadInput(f"OLD_PRIMARY {source[:60]!r} / NEW_PRIMARY {target[:60]!r} are not "
                       "node names") from None
    return Move(kind, instance_name(env.instance.name), *nodes), ""


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "1")


class Starts:
    """Start records of moves in progress, one small JSON file per instance and hpath."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "announce" / "starts"

    def path(self, move: Move, hpath: str) -> Path:
        return self.dir / f"{move.instance}--{hpath}.json"

    def record(self, move: Move, hpath: str, at_ms: int) -> bool:
        """Write the start; True when it replaced a leftover of an earlier attempt."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path(move, hpath)
        replaced = path.exists()
        data = {"start_ms": at_ms, "nonce": os.urandom(8).hex(), "kind": move.kind,
                "source": move.source, "target": move.target}
        tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return replaced

    def take(self, move: Move, hpath: str, max_age: float) -> dict[str, Any] | None:
        """The start record of this move if it is recent and for the same nodes."""
        try:
            data = json.loads(self.path(move, hpath).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("start_ms"), int):
            return None
        if (data.get("source"), data.get("target")) != (move.source, move.target):
            return None  # a leftover of another move of this instance
        if now_ms() - data["start_ms"] > max_age * 1000:
            return None
        return data

    def forget(self, move: Move, hpath: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(move, hpath).unlink()

    def expire(self, max_age: float) -> list[str]:
        """Remove start records older than ``max_age`` s (moves that never finished)."""
        removed = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        limit = time.time() - max_age
        for name in names:
            path = self.dir / name
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    if not name.startswith(".tmp-"):
                        removed.append(name[:-5])
        return removed


def build_event(env: HookEnv, move: Move, start: dict[str, Any] | None,
                end_ms: int) -> dict[str, Any]:
    """The event, with an idempotency key that is the same on every retry.

    Ganeti gives hooks no job id; the key hashes the cluster, hpath, instance, nodes and
    the start record's nonce (unique per pre phase), or the end time when no start was
    recorded. It is computed once and stored with the event.
    """
    start_ms = start["start_ms"] if start else None
    unique = start["nonce"] if start else str(end_ms)
    key = _sha256("\0".join((env.cluster, env.hpath, move.instance, move.source,
                                   move.target, str(unique))).encode()).hexdigest()
    return {"key": key, "kind": move.kind, "hpath": env.hpath, "cluster": env.cluster,
            "master": env.master, "instance": move.instance, "source": move.source,
            "target": move.target, "start_ms": start_ms, "end_ms": end_ms}


def _sha256(data: bytes) -> Any:
    # The builtin _sha256 module: hashlib loads OpenSSL, ~10 ms on every hook run.
    try:
        from _sha256 import sha256
    except ImportError:  # pragma: no cover - a Python built without it
        from hashlib import sha256
    return sha256(data)

"""A durable outbox: one JSON file per event, written atomically, locked while in use.

An event survives a crash from the moment ``create`` returns: the file is written to a
temporary name, fsynced, renamed into place and the directory fsynced. Every later
state change (a delivery marked done, an attempt counted, the file removed once every
delivery is done) is made durable the same way (file and directory fsynced), so a
"delivered" mark survives a crash. Each event holds one delivery per sink with its own
state (attempts, next attempt, last error); a delivery the receiver refused for good
(a permanent 4xx) is dead-lettered: never retried, and the event file is kept until
an operator retries or drops it. At-least-once: a delivery is marked done only after
the receiver said 2xx, so a crash in between means one more send, with the same
idempotency key.

Whoever delivers an event holds its lock (``<run_dir>/outbox/<id>.lock``, flock): the
hook holds it from creating the event to recording its one attempt, ``hookpack outbox
flush`` skips events it cannot lock at once, so the two never send the same event at
the same moment. Locks live in run_dir (tmpfs), events in spool_dir.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hookpack.errors import ActionError, BadInput
from hookpack.record import record

FORMAT = 1
_ID = re.compile(r"^[0-9]{13}-[0-9a-f]{16}$")
TMP_MAX_AGE = 3600.0


def now_ms() -> int:
    return int(time.time() * 1000)


def event_id(created_ms: int, key: str) -> str:
    """Sorts by creation time; the key part keeps two events of one millisecond apart."""
    return f"{created_ms:013d}-{key[:16]}"


def check_id(value: str) -> str:
    if not _ID.match(value):
        raise BadInput(f"outbox id {value[:60]!r} is not an id `hookpack outbox list` shows")
    return value


@record
class Held:
    """An event whose lock we hold; ``data`` is its current content."""

    outbox: Outbox
    id: str
    data: dict[str, Any]
    exists: bool = True

    def save(self) -> None:
        self.outbox.write(self.id, self.data)

    def remove(self) -> None:
        self.outbox.remove(self.id)
        self.exists = False

    def pending(self) -> dict[str, dict[str, Any]]:
        """Deliveries still to be tried (neither done nor dead-lettered)."""
        return {name: d for name, d in self.data["deliveries"].items()
                if not d.get("done_ms") and not d.get("dead_ms")}

    def dead(self) -> dict[str, dict[str, Any]]:
        return {name: d for name, d in self.data["deliveries"].items() if d.get("dead_ms")}

    def settle(self) -> None:
        """Remove the event once every delivery is done, else save its state."""
        if all(d.get("done_ms") for d in self.data["deliveries"].values()):
            self.remove()
        else:
            self.save()


class Outbox:
    def __init__(self, spool_dir: Path, run_dir: Path) -> None:
        self.dir = spool_dir / "outbox"
        self.lock_dir = run_dir / "outbox"

    # -- reading ------------------------------------------------------------------
    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and _ID.match(n[:-5]))

    def count(self) -> int:
        return len(self.ids())

    def read(self, event: str) -> dict[str, Any] | None:
        try:
            with open(self.dir / f"{event}.json", "rb") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise BadInput(f"outbox event {event}: unreadable: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("deliveries"), dict):
            raise BadInput(f"outbox event {event}: not an outbox event file")
        return data

    # -- writing ------------------------------------------------------------------
    def write(self, event: str, data: Mapping[str, Any], *, new: bool = False) -> None:
        """Atomically and durably replace (or create) the event file: tmp, fsync,
        rename, fsync of the directory (so the rename, e.g. a "delivered" mark, survives
        a crash: a lost mark would send the event again)."""
        final = self.dir / f"{event}.json"
        tmp = self.dir / f".tmp-{event}-{os.getpid()}"
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                if os.write(fd, blob) != len(blob):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            self._sync_dir()
        except OSError as err:
            # A full or read-only spool: a clear error, and no torn temporary file left.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ActionError(f"spool {self.dir}: cannot write event {event}: "
                              f"{err.strerror or err}") from None

    def remove(self, event: str) -> None:
        """Remove the event file durably (an unlink a crash undid would send it again)."""
        try:
            os.unlink(self.dir / f"{event}.json")
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clean_tmp(self, max_age: float = TMP_MAX_AGE) -> list[str]:
        """Remove temporary files a killed writer left behind (never a real event)."""
        removed = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.startswith(".tmp-"):
                continue
            path = self.dir / name
            with contextlib.suppress(FileNotFoundError):
                if time.time() - path.stat().st_mtime > max_age:
                    path.unlink()
                    removed.append(name)
        return removed

    # -- locking ------------------------------------------------------------------
    @contextlib.contextmanager
    def create(self, event: str, data: Mapping[str, Any]) -> Iterator[Held]:
        """Write a new event durably and hold its lock while the caller delivers it."""
        with self._locked(event, wait=True) as locked:
            if not locked:  # pragma: no cover - a fresh id is never held by anyone
                raise BadInput(f"outbox event {event} is busy")
            held = Held(self, event, {"format": FORMAT, **data})
            self.write(event, held.data, new=True)
            yield held

    @contextlib.contextmanager
    def claim(self, event: str) -> Iterator[Held | None]:
        """The event, locked; None when another process holds it or it is gone."""
        with self._locked(event, wait=False) as locked:
            data = self.read(event) if locked else None
            yield Held(self, event, data) if data is not None else None

    @contextlib.contextmanager
    def _locked(self, event: str, *, wait: bool) -> Iterator[bool]:
        path = self.lock_dir / f"{event}.lock"
        while True:
            try:
                self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as err:
                raise ActionError(f"outbox lock {path}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            # The previous holder may have unlinked the lock file after we opened it:
            # then our lock is on a dead inode and must be taken again.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield True
        finally:
            if not (self.dir / f"{event}.json").exists():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.close(fd)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential: base, 2 base, 4 base, ... never more than ``cap`` (attempts >= 1)."""
    return float(min(cap, base * 2 ** min(max(0, attempts - 1), 30)))


RETRY_AFTER_MAX = 86400.0  # a receiver's Retry-After is honoured up to a day


@record(frozen=True)
class Failure:
    """Why a delivery attempt failed; ``permanent``: the receiver refused it for good
    (dead-letter it); ``retry_after``: the receiver's Retry-After, s."""

    reason: str
    permanent: bool = False
    retry_after: float | None = None


def record_attempt(delivery: dict[str, Any], failure: Failure | None, *, at_ms: int,
                   base: float, cap: float) -> None:
    """Update one delivery's state after an attempt (``failure`` None: delivered)."""
    delivery["attempts"] = int(delivery.get("attempts", 0)) + 1
    delivery["last_attempt_ms"] = at_ms
    if failure is None:
        delivery["done_ms"] = at_ms
        delivery["last_error"] = ""
        return
    delivery["last_error"] = failure.reason[:300]
    if failure.permanent:
        delivery["dead_ms"] = at_ms  # never retried unless an operator says so
        return
    if failure.retry_after is not None:
        delay = min(max(0.0, failure.retry_after), RETRY_AFTER_MAX)
    else:
        delay = backoff_seconds(delivery["attempts"], base, cap)
    delivery["next_attempt_ms"] = at_ms + int(1000 * delay)


def revive(delivery: dict[str, Any]) -> None:
    """An operator's retry: a dead-lettered delivery is tried again."""
    delivery.pop("dead_ms", None)
    delivery["next_attempt_ms"] = 0

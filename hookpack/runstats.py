"""Per-action run statistics, kept by the dispatcher for `hookpack metrics` and `status`.

One small JSON file per action in `<state_dir>/runs/`, updated under a per-action flock
(hooks for different instances run at the same moment on a node) and replaced
atomically, so a hook killed mid-write never leaves a torn file. Recording is best
effort: it must never make a hook fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

LAST_RUNS = 20


def stats_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def record_run(state_dir: Path, action: str, *, outcome: str, ms: int, hpath: str, phase: str,
               instance: str, message: str, now: float | None = None) -> None:
    directory = stats_dir(state_dir)
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        lock_fd = os.open(directory / f".{action}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                          0o600)
    except OSError:
        return
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        path = directory / f"{action}.json"
        stats = load_stats(path)
        outcomes: dict[str, int] = stats.setdefault("outcomes", {})
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        stats["duration_ms_sum"] = stats.get("duration_ms_sum", 0) + ms
        stats["runs"] = stats.get("runs", 0) + 1
        last = [{"time": round(now if now is not None else time.time(), 3), "hpath": hpath,
                 "phase": phase, "instance": instance, "outcome": outcome, "ms": ms,
                 "message": message[:300]}, *stats.get("last", [])]
        stats["last"] = last[:LAST_RUNS]
        _replace(path, json.dumps(stats, sort_keys=True))
    except OSError:
        pass
    finally:
        os.close(lock_fd)


def load_stats(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def all_stats(state_dir: Path) -> dict[str, dict[str, Any]]:
    directory = stats_dir(state_dir)
    if not directory.is_dir():
        return {}
    return {path.stem: load_stats(path) for path in sorted(directory.glob("*.json"))}


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

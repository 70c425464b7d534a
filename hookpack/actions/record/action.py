"""Record each hook run on this node as one JSON line (which hook, phase, roles)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hookpack import __version__
from hookpack.action import ActionContext
from hookpack.config import Field
from hookpack.result import Result

SETTINGS = {
    "path": Field(str, "/var/log/hookpack/record.jsonl", "File the records are appended to."),
    "include_env": Field(bool, False, "Add the hook's whole GANETI_* environment to each "
                         "record."),
}


def run(ctx: ActionContext) -> Result:
    env = ctx.env
    record: dict[str, object] = {
        "time": round(time.time(), 3),
        "node": ctx.fqdn,
        "hpath": env.hpath,
        "phase": env.phase.value if env.phase else None,
        "opcode": env.opcode,
        "instance": env.instance.name if env.instance else None,
        "roles": sorted(role.value for role in ctx.roles),
        "version": __version__,  # which install ran (upgrades switch whole versions)
    }
    if ctx.settings["include_env"]:
        environment = {f"GANETI_{k}": v for k, v in env.pre.values.items()}
        if env.post is not None:
            environment.update({f"GANETI_POST_{k}": v for k, v in env.post.values.items()})
        record["env"] = environment
    path = Path(ctx.settings["path"])
    _append_line(path, json.dumps(record, sort_keys=True))
    return Result.changed(f"recorded to {path}", [f"appended 1 record to {path}"])


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write() with O_APPEND keeps concurrent hook runs from interleaving lines.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8", "backslashreplace"))
    finally:
        os.close(fd)

"""Global hooks, synchronous part: the operator's `global-pre.d`/`global-post.d` scripts.

Ganeti runs `00-hookpack-global` first in every `<hpath>-pre.d` and
`99-hookpack-global` last in every `<hpath>-post.d`; both land here. The common case
(no global scripts) costs one directory listing: nothing else is imported before
the directory turns out to hold something. The scripts run under Ganeti's RunParts
rules (hookpack/runparts.py) with the opcode's hook environment plus
GANETI_IS_MASTER, GANETI_JOB_ID (only when exactly one job of this node's job queue
runs this opcode on this target) and, after, GANETI_POST_STATUS=success (Ganeti runs
post hooks only when the opcode succeeded). Their results are ignored in both phases:
the exit code is always 0; their output goes to stderr, which Ganeti logs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

# Opcode input keys naming the target, per GANETI_OBJECT_TYPE, and the hook variable
# holding the same name.
TARGET_KEYS = {
    "INSTANCE": ("instance_name", "GANETI_INSTANCE_NAME"),
    "NODE": ("node_name", "GANETI_NODE_NAME"),
    "GROUP": ("group_name", "GANETI_GROUP_NAME"),
    "NETWORK": ("network_name", "GANETI_NETWORK_NAME"),
}


def entry(config: str | None = None) -> str:
    """For the entry script (hookpack/entryscript.py): "0", or "notrun <why>"."""
    why = _main(config)
    return f"notrun {why}" if why else "0"


def main(config: str | None = None) -> int:
    why = _main(config)
    if why:
        phase = os.environ.get("GANETI_HOOKS_PHASE", "").strip().lower()
        sys.stderr.write(f"hookpack global-{phase}: {why}; global hooks not run\n")
    return 0


def _main(config: str | None) -> str:
    """Run the global scripts of this phase; why they could not run, or ""."""
    phase = os.environ.get("GANETI_HOOKS_PHASE", "").strip().lower()
    if phase not in ("pre", "post"):
        return ""
    # The entry is <hooks dir>/<hpath>-<phase>.d/NN-hookpack-global.
    hooks_dir = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))
    directory = os.path.join(hooks_dir, f"global-{phase}.d")
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError:
        return ""
    if not names:
        return ""
    try:
        return _run(directory, names, phase, config)
    except Exception as err:  # Ganeti must never see a traceback, nor a failure
        return f"internal error: {type(err).__name__}: {err}"


def _run(directory: str, names: list[str], phase: str, config: str | None) -> str:
    import time
    from pathlib import Path

    from hookpack.config import config_path, load_config
    from hookpack.errors import HookpackError
    from hookpack.runparts import run_parts

    started = time.monotonic()
    try:
        path, required = config_path(config)
        cfg = load_config(path, required=required)
    except HookpackError as err:
        return str(err)
    settings = cfg.core["global_hooks"]
    if not settings["enabled"]:
        return ""
    deadline = started + max(0.1, cfg.deadline - 0.5)
    fqdn = cfg.core["node"]["fqdn"]
    if not fqdn:
        from hookpack.roles import system_fqdn

        fqdn = system_fqdn()
    environ = global_environment(os.environ, phase, fqdn)
    results = run_parts(Path(directory), environ, timeout=settings["script_timeout"],
                        deadline=deadline, names=names)
    for result in results:
        if result.status == "skip":
            continue
        head = f"hookpack global-{phase}: {result.name}: "
        if result.timed_out:
            head += "killed at its time limit"
        else:
            head += f"exit {result.exit_code}"
        sys.stderr.write(head + (f": {result.output}" if result.output else "") + "\n")
    return ""


def global_environment(environ: Mapping[str, str], phase: str, fqdn: str) -> dict[str, str]:
    """The hook's GANETI_* variables plus the global hooks' additional variables."""
    env = {k: v for k, v in environ.items() if k.startswith("GANETI_")}
    from hookpack.roles import normalize_host

    master = env.get("GANETI_MASTER", "")
    same = bool(master) and normalize_host(master) == normalize_host(fqdn)
    env["GANETI_IS_MASTER"] = "master" if same else "not_master"
    job_id = find_job_id(env)
    if job_id is not None:
        env["GANETI_JOB_ID"] = str(job_id)
    if phase == "post":
        env["GANETI_POST_STATUS"] = "success"
    return env


def find_job_id(env: Mapping[str, str]) -> int | None:
    """The id of the one job in this node's queue running this opcode on this target."""
    import json

    data_dir = env.get("GANETI_DATA_DIR") or "/var/lib/ganeti"
    queue = os.path.join(data_dir, "queue")
    op_code = env.get("GANETI_OP_CODE", "")
    if not op_code:
        return None
    try:
        names = [n for n in os.listdir(queue) if n.startswith("job-")]
    except OSError:
        return None
    target = TARGET_KEYS.get(env.get("GANETI_OBJECT_TYPE", ""))
    found = []
    for name in names:
        try:
            with open(os.path.join(queue, name), "rb") as handle:
                job = json.load(handle)
        except (OSError, ValueError):
            continue
        if not isinstance(job, dict) or not isinstance(job.get("ops"), list):
            continue
        for op in job["ops"]:
            if not isinstance(op, dict) or op.get("status") != "running":
                continue
            raw = op.get("input")
            given: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if given.get("OP_ID") != op_code:
                continue
            if target is not None:
                key, var = target
                if key in given and var in env and given[key] != env[var]:
                    continue
            found.append(job.get("id"))
    if len(found) == 1 and isinstance(found[0], int | str) and str(found[0]).isdigit():
        return int(found[0])
    return None

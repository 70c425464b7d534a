"""`hookpack status [INSTANCE] [--json]`: what hookpack did and what is, per instance.

Instances are the ones Ganeti's KVM runtime dir knows on this node (``pid/<inst>``,
``conf/<inst>.runtime``, ``ctrl/<inst>.qmp``, ``nic/<inst>/``); one named on the
command line may also be one only hookpack's own records know (its last hook runs,
its stored shaping tags). Each enabled action adds its part by defining
``status(cfg: Config, paths: Paths, instance_names: list[str]) -> dict[str, Part]``
in its module (like ``doctor`` and ``metrics``). Read-only, no lock taken, every QMP
call bounded by QMP_TIMEOUT; a problem with one item is that item's ``error``.
The JSON schema is documented in docs/monitoring.md (SCHEMA_VERSION).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from hookpack import registry, validate
from hookpack.action import Paths
from hookpack.config import Config
from hookpack.errors import BadInput, HookpackError
from hookpack.record import field, record
from hookpack.runstats import all_stats

SCHEMA_VERSION = 1
QMP_TIMEOUT = 3.0  # seconds per QMP session (a busy or hung socket gives up then)
RUNS_SHOWN = 10  # newest hook runs per instance


@record
class Part:
    """One action's status of one instance: JSON fields and the human lines."""

    data: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"enabled": True, "error": self.error, **self.data}


def kvm_instances(paths: Paths) -> dict[str, set[str]]:
    """Instance name -> where the KVM runtime dir shows it (pid, runtime, qmp, nic)."""
    found: dict[str, set[str]] = {}
    for source, folder, suffix in (("pid", "pid", ""), ("runtime", "conf", ".runtime"),
                                   ("qmp", "ctrl", ".qmp"), ("nic", "nic", "")):
        try:
            entries = list((paths.kvm_dir / folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            if suffix and not entry.name.endswith(suffix):
                continue
            if source == "nic" and not entry.is_dir():
                continue
            name = entry.name[: len(entry.name) - len(suffix)] if suffix else entry.name
            if _valid(name):
                found.setdefault(name, set()).add(source)
    return found


def recorded_instances(paths: Paths) -> set[str]:
    """Instances hookpack's own records name: its hook runs and its stored shaping tags."""
    names = {str(run.get("instance", "")) for stats in all_stats(paths.state_dir).values()
             for run in stats.get("last", []) if isinstance(run, dict)}
    with contextlib.suppress(OSError):
        names |= {p.name for p in (paths.state_dir / "shaping" / "tags").iterdir()}
    return {n for n in names if n and _valid(n)}


def _valid(name: str) -> bool:
    try:
        validate.instance_name(name)
    except BadInput:
        return False
    return True


def select(paths: Paths, wanted: str | None) -> dict[str, set[str]]:
    """The instances to show (name -> sources); BadInput for an unknown ``wanted``."""
    found = kvm_instances(paths)
    if wanted is None:
        return found
    name = validate.instance_name(wanted)
    if name in found:
        return {name: found[name]}
    if name in recorded_instances(paths):
        return {name: {"records"}}
    raise BadInput(f"unknown instance {name}: not in {paths.kvm_dir} nor in hookpack's "
                   "records on this node")


def runs_of(paths: Paths, names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Newest hook runs per instance, across actions (runstats keeps the last per action)."""
    wanted = set(names)
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in wanted}
    for action, stats in all_stats(paths.state_dir).items():
        for run in stats.get("last", []):
            if isinstance(run, dict) and run.get("instance") in wanted:
                out[run["instance"]].append({
                    "action": action, "time": run.get("time"), "hpath": run.get("hpath"),
                    "phase": run.get("phase"), "outcome": run.get("outcome"),
                    "ms": run.get("ms"), "message": run.get("message", "")})
    for name, runs in out.items():
        out[name] = sorted(runs, key=lambda r: -(r["time"] or 0))[:RUNS_SHOWN]
    return out


def action_parts(cfg: Config, paths: Paths, names: list[str]
                 ) -> dict[str, dict[str, Part | None]]:
    """action -> instance -> Part (None: the action is disabled)."""
    parts: dict[str, dict[str, Part | None]] = {}
    for spec in registry.ACTIONS:
        module = importlib.import_module(spec.module)
        hook = getattr(module, "status", None)
        if hook is None:
            continue
        if not cfg.section_enabled(spec.section, spec.enabled_by_default):
            parts[spec.name] = dict.fromkeys(names)
            continue
        try:
            got: Mapping[str, Part] = hook(cfg, paths, names) if names else {}
        except HookpackError as err:
            got = {n: Part(error=str(err)) for n in names}
        except Exception as err:  # status must show, not crash: the item's error
            got = {n: Part(error=f"internal error: {type(err).__name__}: {err}")
                   for n in names}
        parts[spec.name] = {n: got.get(n) or Part(error="no status reported") for n in names}
    return parts


@record
class InstanceStatus:
    name: str
    pid: int | None
    sources: list[str]
    parts: dict[str, Part | None]  # action -> its part (None: action disabled)
    runs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "running": self.pid is not None, "pid": self.pid,
                "sources": self.sources,
                "actions": {action: part.to_json() if part else {"enabled": False}
                            for action, part in self.parts.items()},
                "runs": self.runs}

    def lines(self) -> list[str]:
        state = f"running, pid {self.pid}" if self.pid is not None else "not running here"
        out = [f"{self.name}: {state}"]
        for action, part in self.parts.items():
            out += _part_lines(action, part)
        for run in self.runs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["time"] or 0))
            out.append(f"  run {when} {run['action']} {run['hpath']}/{run['phase']}: "
                       f"{run['outcome']} ({run['ms']} ms) {run['message']}")
        if not self.runs:
            out.append("  runs: none recorded")
        return out


def _part_lines(action: str, part: Part | None) -> list[str]:
    head = f"  {action}:"
    if part is None:
        return [f"{head} disabled"]
    lines = ([part.error] if part.error else []) + part.lines
    if not lines:
        return [f"{head} nothing to show"]
    pad = " " * len(head)
    return [f"{head if i == 0 else pad} {line}" for i, line in enumerate(lines)]


def collect(cfg: Config, wanted: str | None = None) -> list[InstanceStatus]:
    from hookpack.actions.disk_grow.node import qemu_pid

    paths = Paths.from_config(cfg)
    chosen = select(paths, wanted)
    names = sorted(chosen)
    parts = action_parts(cfg, paths, names)
    runs = runs_of(paths, names)
    return [InstanceStatus(name, qemu_pid(paths, name), sorted(chosen[name]),
                           {action: by_name[name] for action, by_name in parts.items()},
                           runs[name]) for name in names]


def to_json(instances: Iterable[InstanceStatus]) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "generated_at": round(time.time(), 3),
            "instances": [inst.to_json() for inst in instances]}


def render(instances: Iterable[InstanceStatus]) -> str:
    """Compact text: one block per instance."""
    out = [line for inst in instances for line in inst.lines()]
    return "\n".join(out or ["no instance on this node"]) + "\n"

"""`hookpack doctor`: is this node ready? One line per check: pass, warn or fail.

Core checks live here; an action adds its own by defining
``doctor(cfg: Config, paths: Paths) -> list[Check]`` in its module.
"""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hookpack import registry
from hookpack.action import Paths
from hookpack.config import Config
from hookpack.emulator import NAME_MASK
from hookpack.errors import HookpackError
from hookpack.hooksinstall import default_layout, is_entry

PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper():4} {self.name}: {self.message}"
        return text + (f" -> {self.fix}" if self.fix and self.status != PASS else "")


def run_checks(cfg: Config) -> list[Check]:
    paths = Paths.from_config(cfg)
    checks = [ganeti_version(paths), *hooks_installed(paths), *config_checks(cfg)]
    for spec in registry.ACTIONS:
        if not cfg.section_enabled(spec.section, spec.enabled_by_default):
            continue
        module = importlib.import_module(spec.module)
        extra = getattr(module, "doctor", None)
        if extra is None:
            continue
        try:
            checks.extend(extra(cfg, paths))
        except HookpackError as err:
            checks.append(Check(spec.name, FAIL, str(err)))
    return checks


def ganeti_version(paths: Paths) -> Check:
    release = paths.ganeti_data_dir / "ssconf_release_version"
    try:
        version = release.read_text().strip()
    except FileNotFoundError:
        return Check("ganeti", FAIL, f"{release} not found: Ganeti is not installed or this "
                     "node is not in a cluster",
                     "install Ganeti and join the node, or set paths.ganeti_data_dir")
    except OSError as err:
        return Check("ganeti", FAIL, f"cannot read {release}: {err.strerror}")
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor < (3, 0):
        return Check("ganeti", WARN, f"Ganeti {version}: hookpack is built and tested for 3.0")
    return Check("ganeti", PASS, f"Ganeti {version}")


def hooks_installed(paths: Paths) -> Iterable[Check]:
    root = paths.hooks_dir
    if not root.is_dir():
        yield Check("hooks", FAIL, f"{root} does not exist",
                    f"run `hookpack hooks install --root {root}`")
        return
    wanted = sorted(f"{d}/{entry}" for entry, dirs in default_layout().items() for d in dirs)
    missing, broken = [], []
    for name in wanted:
        entry = root / name
        if not entry.exists() or not is_entry(entry):
            missing.append(name)
        elif not (entry.is_file() and os.access(entry, os.X_OK)) or _bad_interpreter(entry):
            broken.append(name)
    if missing:
        yield Check("hooks", FAIL, f"{len(missing)} of {len(wanted)} hookpack entries are "
                    f"missing (e.g. {missing[0]})",
                    f"run `hookpack hooks install --root {root}`")
    elif broken:
        yield Check("hooks", FAIL, f"{len(broken)} entries are not executable or name a "
                    f"missing interpreter (e.g. {broken[0]})",
                    f"run `hookpack hooks install --root {root}`")
    else:
        yield Check("hooks", PASS, f"all {len(wanted)} entries installed")
    skipped = sorted(f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir()
                     for f in d.iterdir() if not f.name.startswith(".")
                     and not NAME_MASK.match(f.name))
    if skipped:
        yield Check("hook-names", WARN, f"Ganeti skips {len(skipped)} file(s) whose names are "
                    f"not ^[a-zA-Z0-9_-]+$ (e.g. {skipped[0]})",
                    "rename them without dots if they are meant to run")


def _bad_interpreter(entry: Path) -> bool:
    first = entry.read_text(errors="replace").splitlines()[0]
    interpreter = first[2:].split()[0] if first.startswith("#!") and first[2:].split() else ""
    return not (interpreter and os.access(interpreter, os.X_OK))


def config_checks(cfg: Config) -> Iterable[Check]:
    if cfg.path is None:
        yield Check("config", WARN, "no config file: every action runs with its defaults",
                    "write /etc/hookpack/hookpack.toml (see docs/configuration.md)")
    else:
        info = cfg.path.stat()
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            yield Check("config-mode", FAIL, f"{cfg.path} is writable by group or others "
                        "(it decides what runs as root)", f"chmod 600 {cfg.path}")
        elif info.st_uid != 0 and os.geteuid() == 0:
            yield Check("config-mode", FAIL, f"{cfg.path} is not owned by root",
                        f"chown root: {cfg.path}")
        else:
            yield Check("config-mode", PASS, f"{cfg.path} is owned by root and not writable "
                        "by others")
    problems = []
    for spec in registry.ACTIONS:
        module = importlib.import_module(spec.module)
        try:
            cfg.section(spec.section, getattr(module, "SETTINGS", {}))
        except HookpackError as err:
            problems.append(str(err))
    known = set(cfg.core) | {s.section for s in registry.ACTIONS}
    problems += [f"unknown section [{s}]" for s in sorted(set(cfg.raw) - known)]
    if problems:
        for problem in problems:
            yield Check("config", FAIL, problem, "fix the file; `hookpack config check`")
    else:
        enabled = [s.name for s in registry.ACTIONS
                   if cfg.section_enabled(s.section, s.enabled_by_default)]
        yield Check("config", PASS, f"valid; enabled actions: {', '.join(enabled) or 'none'}")

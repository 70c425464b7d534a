"""`hookpack doctor`: is this node ready? One line per check: pass, warn or fail.

Core checks live here; an action adds its own by defining
``doctor(cfg: Config, paths: Paths) -> list[Check]`` in its module.
"""

from __future__ import annotations

import importlib
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from hookpack import registry
from hookpack.action import Paths
from hookpack.config import Config
from hookpack.emulator import NAME_MASK
from hookpack.errors import HookpackError
from hookpack.hooksinstall import default_layout, is_entry
from hookpack.record import record

if TYPE_CHECKING:  # imported lazily: doctor runs off the hook's hot path, but keep it light
    from hookpack.actions.pinning.topology import Topology
    from hookpack.outbox import Outbox

PASS, WARN, FAIL = "pass", "warn", "fail"


@record(frozen=True)
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
    checks = [ganeti_version(paths), node_name_check(cfg, paths), kvm_dir_check(paths),
              *hooks_installed(paths), entry_facts_check(cfg, paths),
              *config_checks(cfg), *secret_checks(cfg), *qmp_checks(paths), numa_check(cfg, paths),
              outbox_check(paths), hook_server_check(paths), *unit_checks(cfg)]
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


def unit_checks(cfg: Config) -> list[Check]:
    """hookpack's systemd units (hookpack/unitcheck.py): installed, enabled, not failed."""
    from hookpack.unitcheck import check_units

    return [Check(v.unit if v.unit == "units" else f"unit {v.unit}", v.status, v.message,
                  v.fix) for v in check_units(cfg)]


def ganeti_version(paths: Paths) -> Check:
    release = paths.ganeti_data_dir / "ssconf_release_version"
    try:
        version = release.read_text().strip()
    except FileNotFoundError:
        return Check("ganeti", FAIL, f"{release} not found: Ganeti is not installed or this "
                     "node is not in a cluster",
                     "install Ganeti and join the node, or set paths.ganeti_data_dir")
    except OSError as err:
        return Check("ganeti", FAIL, f"cannot read {release}: {err.strerror}",
                     "run hookpack doctor as root")
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor < (3, 0):
        return Check("ganeti", WARN, f"Ganeti {version}: hookpack is built and tested for 3.0")
    return Check("ganeti", PASS, f"Ganeti {version}")


def node_name_check(cfg: Config, paths: Paths) -> Check:
    """Ganeti names nodes; hookpack finds its roles by comparing this node's name with
    those names (roles.py). A name Ganeti does not know means no action ever runs here."""
    from hookpack.roles import normalize_host, system_fqdn

    configured = cfg.core["node"]["fqdn"]
    name = configured or system_fqdn()
    how = "node.fqdn" if configured else "the system's FQDN (node.fqdn is empty)"
    node_list = paths.ganeti_data_dir / "ssconf_node_list"
    try:
        nodes = node_list.read_text().split()
    except FileNotFoundError:
        return Check("node-name", FAIL, f"{node_list} not found: cannot tell whether "
                     f"{name!r} is a node of the cluster",
                     "join the node to the cluster, or set paths.ganeti_data_dir")
    except (OSError, UnicodeDecodeError) as err:
        return Check("node-name", FAIL, f"cannot read {node_list}: {err}",
                     "run hookpack doctor as root")
    if normalize_host(name) in {normalize_host(n) for n in nodes}:
        return Check("node-name", PASS, f"{name} ({how}) is a node of the cluster")
    return Check("node-name", FAIL, f"{name!r} ({how}) is not a node of the cluster "
                 f"({', '.join(nodes[:5]) or 'no nodes'}{', ...' if len(nodes) > 5 else ''}):"
                 " hookpack finds no role for this node and runs no action that needs one",
                 "set node.fqdn to this node's name as `gnt-node list` shows it")


def entry_facts_check(cfg: Config, paths: Paths) -> Check:
    """The entries decide without Python only while the config's mtime equals theirs."""
    from hookpack.hooksinstall import ENTRY_NAME

    entries = [e for e in sorted(paths.hooks_dir.glob(f"*.d/{ENTRY_NAME}")) if is_entry(e)]
    if not entries or cfg.path is None:
        return Check("hook-facts", PASS, "no config file or no entries: nothing to compare")
    fix = (f"run `hookpack hooks install --root {paths.hooks_dir} --entry-config {cfg.path}`")
    named = entry_setting(entries[0], "hp_config")
    if named != str(cfg.path):
        return Check("hook-facts", WARN, f"the hook entries read {named or 'another file'}, "
                     f"not {cfg.path}", fix)
    try:
        config_mtime = os.stat(cfg.path).st_mtime_ns
        stale = [e for e in entries if os.stat(e).st_mtime_ns != config_mtime]
    except OSError as err:
        return Check("hook-facts", WARN, f"cannot compare the entries with the config: {err}")
    if stale:
        return Check("hook-facts", WARN, f"{cfg.path} changed after the hook entries were "
                     f"installed ({len(stale)} of {len(entries)}, e.g. "
                     f"{stale[0].parent.name}/{stale[0].name}): every hook run starts Python "
                     "to decide what to do (correct, but slower)", fix)
    return Check("hook-facts", PASS, "the entries' facts match the config")


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
    else:
        yield Check("hook-names", PASS, "Ganeti runs every file in the hook directories")


def _bad_interpreter(entry: Path) -> bool:
    interpreter = entry_python(entry)
    return not (interpreter and os.access(interpreter, os.X_OK))


def entry_python(entry: Path) -> str:
    """The interpreter an entry runs (hookpack/entryscript.py)."""
    return entry_setting(entry, "hp_python")


def entry_setting(entry: Path, name: str) -> str:
    """A quoted setting of an entry script: `name='...'` near its top."""
    try:
        lines = entry.read_text(errors="replace").splitlines()[:40]
    except OSError:
        return ""
    for line in lines:
        if line.startswith(f"{name}='") and line.endswith("'"):
            return line[len(name) + 2:-1].replace("'\\''", "'")
    return ""


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


def kvm_dir_check(paths: Paths) -> Check:
    if paths.kvm_dir.is_dir():
        return Check("paths", PASS, f"KVM runtime files in {paths.kvm_dir}")
    return Check("paths", WARN, f"{paths.kvm_dir} does not exist: no KVM instance has run "
                 "here, or Ganeti keeps its KVM runtime files elsewhere",
                 "set paths.kvm_dir to Ganeti's kvm-hypervisor directory if it is elsewhere")


def secret_files(cfg: Config) -> list[tuple[str, Path]]:
    """("section.key", path) of every root-only file an enabled action is set to read."""
    found = []
    for spec in registry.ACTIONS:
        if not cfg.section_enabled(spec.section, spec.enabled_by_default):
            continue
        schema = getattr(importlib.import_module(spec.module), "SETTINGS", {})
        try:
            values = cfg.section(spec.section, schema)
        except HookpackError:
            continue  # reported by config_checks
        for key, field in schema.items():
            if key.endswith("_file") and "root-only" in field.doc.lower() and values[key]:
                found.append((f"{spec.section}.{key}", Path(str(values[key]))))
    return found


def secret_checks(cfg: Config) -> Iterable[Check]:
    files = secret_files(cfg)
    bad = [_secret_problem(key, path) for key, path in files]
    yield from filter(None, bad)
    if not any(bad):
        yield Check("secrets", PASS, f"{len(files)} secret file(s), each root-only")


def _secret_problem(key: str, path: Path) -> Check | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return Check("secrets", FAIL, f"{key}: {path} does not exist",
                     f"write it (install -m 600 -o root /dev/stdin {path}) or clear {key}")
    except OSError as err:
        return Check("secrets", FAIL, f"{key}: cannot stat {path}: {err.strerror}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check("secrets", FAIL, f"{key}: {path} is accessible by group or others "
                     f"(mode {mode:o}): the action refuses to read it", f"chmod 600 {path}")
    if info.st_uid != 0 and os.geteuid() == 0:
        return Check("secrets", FAIL, f"{key}: {path} is not owned by root",
                     f"chown root: {path}")
    return None


QMP_TIMEOUT = 2.0


def qmp_checks(paths: Paths) -> Iterable[Check]:
    """Each running instance's QMP socket answers (pinning and disk-grow need it)."""
    from hookpack.actions.pinning.threads import running_instances

    running = running_instances(paths.kvm_dir, paths.proc_root)
    if not running:
        yield Check("qmp", PASS, f"no running instance under {paths.kvm_dir}")
    for name, proc in sorted(running.items()):
        yield _qmp_check(name, proc.pid, paths.kvm_dir / "ctrl" / f"{name}.qmp")


def _qmp_check(name: str, pid: int, sock: Path) -> Check:
    from hookpack.adapters.qmp import QmpBusy, QmpError, QmpUnavailable, session

    try:
        with session(sock, QMP_TIMEOUT) as qmp:
            state = qmp.execute("query-status").get("status", "?")
    except QmpBusy:
        return Check("qmp", WARN, f"{name}: {sock} is held by another QMP client",
                     "retry; if it stays busy, find the client with `ss -xp | grep "
                     f"{sock.name}`")
    except (QmpUnavailable, QmpError) as err:
        return Check("qmp", FAIL, f"{name}: QEMU pid {pid} runs but QMP does not answer "
                     f"({err}): pinning and disk-grow cannot reach it",
                     f"restore the socket: `gnt-instance reboot {name}` (or stop and start it)")
    return Check("qmp", PASS, f"{name}: QMP answers (status {state})")


def numa_check(cfg: Config, paths: Paths) -> Check:
    """The CPU/NUMA topology pinning plans with, and reserved_cpus against it."""
    from hookpack.actions.pinning.topology import read_topology

    try:
        topo = read_topology(paths.sysfs_root)
    except HookpackError as err:
        return Check("numa", FAIL, f"cannot read the CPU topology: {err}",
                     "check paths.sysfs_root (normally /sys)")
    nodes = ", ".join(f"node{n}: {len(cpus)} CPU(s)" for n, cpus in topo.nodes.items())
    problem = _reserved_problem(cfg, topo) or _sets_problem(cfg, topo)
    if problem:
        return Check("numa", WARN, f"{topo.describe()}; {problem}",
                     "fix pinning.reserved_cpus / dedicated_cpus / shared_cpus (cpulists "
                     "of this node's CPUs)")
    isolated = ""
    if topo.isolated:
        from hookpack.actions.pinning.topology import format_cpulist

        isolated = (f"; isolated (isolcpus) CPU(s) {format_cpulist(topo.isolated)}: only "
                    "vCPUs pinning.dedicated_cpus names go there")
    return Check("numa", PASS, f"{topo.describe()} ({nodes}){isolated}")


def _sets_problem(cfg: Config, topo: Topology) -> str:
    """pinning.dedicated_cpus / shared_cpus against the online and isolated CPUs."""
    from hookpack.actions.pinning.action import SETTINGS, policy_from

    if not cfg.section_enabled("pinning", False):
        return ""
    try:
        policy = policy_from(cfg.section("pinning", SETTINGS))
    except HookpackError:
        return ""  # reported by config_checks
    for key, cpus in (("dedicated_cpus", policy.dedicated_set),
                      ("shared_cpus", policy.shared_set)):
        if cpus is not None and cpus - topo.online:
            return (f"pinning.{key} names CPU(s) this node does not have online: "
                    f"{sorted(cpus - topo.online)}")
    if policy.shared_set is not None and policy.shared_set & topo.isolated:
        return (f"pinning.shared_cpus names isolated CPU(s) "
                f"{sorted(policy.shared_set & topo.isolated)}: emulator threads never go "
                "there")
    return ""


def _reserved_problem(cfg: Config, topo: Topology) -> str:
    from hookpack.actions.pinning.action import SETTINGS, policy_from

    if not cfg.section_enabled("pinning", False):
        return ""
    try:
        reserved = policy_from(cfg.section("pinning", SETTINGS)).reserved
    except HookpackError:
        return ""  # reported by config_checks
    online = topo.online
    offline = sorted(reserved - online)
    if offline:
        return f"pinning.reserved_cpus names CPU(s) this node does not have online: {offline}"
    full = [n for n, cpus in topo.nodes.items() if set(cpus) <= reserved]
    if full:
        return f"pinning.reserved_cpus leaves NUMA node(s) {full} no CPU for instances"
    return ""


OUTBOX_STALE_S = 3600.0


def hook_server_check(paths: Paths) -> Check:
    """Is a hook server taking the hook runs (hookpack/hookserver.py)? Without it they
    still run, each in a Python of its own: slower, not broken."""
    from hookpack.entryscript import SERVER_SOCKET
    from hookpack.hookserver import serving_pid

    socket = paths.run_dir / SERVER_SOCKET
    pid = serving_pid(socket)
    if pid is not None and socket.is_socket():
        return Check("hook server", PASS, f"serving {socket} (pid {pid})")
    return Check("hook server", WARN, f"not running ({socket}): each hook run with work starts "
                 "a Python of its own",
                 "systemctl enable --now hookpack-hook-server.service (the role does, "
                 "hookpack_enable_hook_server)")


def outbox_check(paths: Paths, now: float | None = None) -> Check:
    """Undelivered announcements: a backlog older than an hour means a sink is down or
    the flush timer does not run."""
    from hookpack.outbox import Outbox

    outbox = Outbox(paths.spool_dir, paths.run_dir)
    ids = outbox.ids()
    if not ids:
        return Check("outbox", PASS, "empty")
    age = (now if now is not None else time.time()) - int(ids[0][:13]) / 1000
    try:
        oldest = outbox.read(ids[0]) or {}
    except HookpackError as err:
        return Check("outbox", FAIL, str(err), f"look at it, then `hookpack outbox drop {ids[0]}`")
    errors = [d.get("last_error") for d in oldest.get("deliveries", {}).values()
              if not d.get("done_ms") and d.get("last_error")]
    summary = f"{len(ids)} event(s) queued, oldest {_age(age)} old"
    dead = _dead_letters(outbox, ids)
    if dead:
        return Check("outbox", WARN, f"{summary}; {len(dead)} dead-lettered deliver"
                     f"{'y' if len(dead) == 1 else 'ies'} (refused for good): {dead[0]}",
                     "`hookpack outbox list`; fix the receiver or the event, then "
                     "`hookpack outbox retry ID`, or `hookpack outbox drop ID`")
    if age < OUTBOX_STALE_S:
        return Check("outbox", PASS, summary)
    last = f"; last error: {errors[0]}" if errors else ""
    return Check("outbox", WARN, summary + last,
                 "`hookpack outbox list`; fix the sink, then `hookpack outbox retry --all`; "
                 "is hookpack-outbox-flush.timer active?")


def _dead_letters(outbox: Outbox, ids: list[str]) -> list[str]:
    """``<id> <sink>: <last error>`` of every dead-lettered delivery."""
    found = []
    for event in ids:
        try:
            data = outbox.read(event) or {}
        except HookpackError:
            continue
        found += [f"{event} {sink}: {d.get('last_error', '')}"
                  for sink, d in sorted(data.get("deliveries", {}).items())
                  if isinstance(d, dict) and d.get("dead_ms") and not d.get("done_ms")]
    return found


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"

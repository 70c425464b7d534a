"""Lay hookpack's entry scripts out into a Ganeti hooks tree, as a reconcile.

Ganeti runs a file only if it is executable and its name matches ^[a-zA-Z0-9_-]+$
(shared/reference/ganeti-hooks.md), so the entries are `50-hookpack` (the actions),
`00-hookpack-global` and `99-hookpack-global` (global hooks: they sort first in every
`<hpath>-pre.d` and last in every `<hpath>-post.d`), and temporary files start with a
dot (Ganeti lists only visible files). Files that are not hookpack's
entries are never touched; directories hookpack created are listed in a manifest so
`uninstall` removes exactly those (when empty) and nothing else. Each entry is a small
/bin/sh program (hookpack/entryscript.py) with facts from the config baked in; its
mtime is set to the config's, which is how it knows they still hold.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from hookpack import entryscript, registry
from hookpack.entryscript import EntryFacts

ENTRY_NAME = "50-hookpack"
GLOBAL_PRE_ENTRY = "00-hookpack-global"
GLOBAL_POST_ENTRY = "99-hookpack-global"
ENTRY_NAMES = (GLOBAL_PRE_ENTRY, ENTRY_NAME, GLOBAL_POST_ENTRY)
MARKER = "# hookpack-entry"
MANIFEST = ".hookpack-created-dirs"
PORTABLE_PYTHON = "/usr/bin/python3"
DEFAULT_CONFIG = "/etc/hookpack/hookpack.toml"

# hpaths that get global hooks: every opcode hooks path. config-update is not run
# around an opcode (Ganeti runs it on the master after any configuration write).
GLOBAL_HPATHS = tuple(h for h in registry.GANETI_HPATHS if h != "config-update")


def render_entry(python: str, config: str | None, entry: str = ENTRY_NAME,
                 directory: str = "disk-grow-post.d", facts: EntryFacts | None = None) -> str:
    """The entry ``entry`` of ``directory``; without ``facts`` it never skips Python."""
    facts = facts or EntryFacts(config=config or DEFAULT_CONFIG, config_arg=config or "",
                                state="unknown")
    if entry != ENTRY_NAME:
        return entryscript.render(directory, "global", python, facts, [], [])
    hpath, _, phase = directory.removesuffix(".d").rpartition("-")
    specs = [s for s in registry.candidates(hpath, phase) if s.name in facts.enabled]
    roles = sorted({"any" if not s.roles else "master" if r == "master" else "instance"
                    for s in specs for r in (s.roles or ("",))})
    return entryscript.render(directory, "actions", python, facts,
                              [s.name for s in specs], roles)


def portable_facts() -> EntryFacts:
    """No facts (the repo's hooks.d/): such an entry always lets hookpack decide."""
    return EntryFacts(config=DEFAULT_CONFIG, config_arg="", state="unknown")


def read_facts(config: str | None) -> EntryFacts:
    """What the entries bake in from the config (see hookpack/entryscript.py)."""
    from hookpack.config import load_config
    from hookpack.errors import ConfigError

    path = config or DEFAULT_CONFIG
    unknown = EntryFacts(config=path, config_arg=config or "", state="unknown")
    try:
        before = _settled_stat(path)
        cfg = load_config(Path(path), required=bool(config))
        after = _stat_key(path)
    except ConfigError:
        return EntryFacts(config=path, config_arg=config or "", state="unknown",
                          fail_closed=_raw_fail_closed(path))
    except OSError:
        return unknown
    if before != after:  # written while we read it: trust nothing
        return unknown
    mtime_ns = before[0] if before else None
    log = cfg.core["log"]
    return EntryFacts(
        config=path, config_arg=config or "",
        state="absent" if mtime_ns is None else "present", mtime_ns=mtime_ns,
        fail_closed=cfg.core["hook"]["pre_fail_closed"], syslog=log["syslog"],
        facility=log["syslog_facility"], logfile=log["file"],
        global_enabled=cfg.core["global_hooks"]["enabled"],
        enabled=frozenset(s.name for s in registry.ACTIONS
                          if cfg.section_enabled(s.section, s.enabled_by_default)),
        node=confirmed_node_name(cfg.core["node"]["fqdn"],
                                 Path(cfg.core["paths"]["ganeti_data_dir"])),
        deadline=cfg.deadline,
        server=str(cfg.path_of("run_dir") / entryscript.SERVER_SOCKET))


def _stat_key(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _settled_stat(path: str, tick_ns: int = 50_000_000) -> tuple[int, int, int] | None:
    """The config's (mtime, size, inode), once the clock is past its mtime by more than
    a filesystem timestamp tick: any later write then gets a later mtime, so an entry
    whose mtime equals the config's really saw this content."""
    key = _stat_key(path)
    if key is not None:
        import time

        wait_ns = key[0] + tick_ns - time.time_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
    return key


def confirmed_node_name(configured: str, data_dir: Path) -> str:
    """This node's name (lower case) if Ganeti's node list holds it, else "": an entry
    then leaves every role decision to hookpack."""
    from hookpack.roles import normalize_host, system_fqdn

    name = normalize_host(configured or system_fqdn())
    try:
        nodes = {normalize_host(n) for n in (data_dir / "ssconf_node_list").read_text().split()}
    except (OSError, UnicodeDecodeError):
        return ""
    return name if name in nodes else ""


def _raw_fail_closed(path: str) -> bool:
    import tomllib

    try:
        with open(path, "rb") as handle:
            hook = tomllib.load(handle).get("hook", {})
    except (OSError, ValueError):
        return False
    value = hook.get("pre_fail_closed") if isinstance(hook, dict) else None
    return value is True


def stable_python() -> str:
    """The interpreter entries name: under the versions layout
    (<home>/versions/<id>/venv, <home>/current -> versions/<id>) the stable
    <home>/current/venv/bin/python, else this interpreter."""
    prefix = Path(sys.prefix)
    home = prefix.parents[2] if len(prefix.parents) > 2 else None
    if (home is not None and prefix.parent.parent.name == "versions"
            and (home / "current").is_symlink()):
        return str(home / "current" / prefix.name / "bin" / "python")
    return sys.executable


def default_layout() -> dict[str, list[str]]:
    """Entry name -> the `<hpath>-<phase>.d` directories that get it."""
    return {
        GLOBAL_PRE_ENTRY: sorted(f"{h}-pre.d" for h in GLOBAL_HPATHS),
        ENTRY_NAME: registry.layout(),
        GLOBAL_POST_ENTRY: sorted(f"{h}-post.d" for h in GLOBAL_HPATHS),
    }


def _wanted(dirs: Iterable[str] | None,
            entries: dict[str, list[str]] | None) -> dict[str, list[str]]:
    if entries is not None:
        return {name: sorted(entries.get(name, ())) for name in ENTRY_NAMES}
    if dirs is not None:  # only the actions' entry, in these directories
        return {name: sorted(dirs) if name == ENTRY_NAME else [] for name in ENTRY_NAMES}
    return default_layout()


def install(root: Path, *, python: str | None = None, config: str | None = None,
            dirs: Iterable[str] | None = None, entries: dict[str, list[str]] | None = None,
            dry_run: bool = False, facts: EntryFacts | None = None) -> list[str]:
    """Make ``root`` hold exactly hookpack's entries; return what changed (or would).

    Default layout: `default_layout()`. ``dirs``: only the actions' entry, in these
    directories; ``entries``: entry name -> directories (names not given: none).
    ``facts``: instead of reading them from the config (tests, the repo's hooks.d).
    """
    wanted = _wanted(dirs, entries)
    python = python or stable_python()
    facts = facts or read_facts(config)
    if dry_run:
        return _plan(root, python, facts, wanted)
    changes: list[str] = []
    root.mkdir(parents=True, exist_ok=True)
    created = _read_manifest(root)
    for name in sorted({d for ds in wanted.values() for d in ds}):
        directory = root / name
        if not directory.is_dir():
            directory.mkdir(mode=0o755)
            created.add(name)
            changes.append(f"created {name}/")
        for entry in ENTRY_NAMES:
            if name in wanted[entry]:
                content = render_entry(python, config, entry, name, facts)
                if _write_if_different(directory / entry, content, facts.mtime_ns):
                    changes.append(f"wrote {name}/{entry}")
    for entry in ENTRY_NAMES:
        for name in sorted(_dirs_with_entry(root, entry) - set(wanted[entry])):
            changes.extend(_remove_entry(root, name, created, entry))
    _write_manifest(root, created)
    return changes


def plan_install(root: Path, *, python: str | None = None, config: str | None = None,
                 dirs: Iterable[str] | None = None,
                 entries: dict[str, list[str]] | None = None) -> list[str]:
    """What `install` would change, without touching anything."""
    return _plan(root, python or stable_python(), read_facts(config), _wanted(dirs, entries))


def _plan(root: Path, python: str, facts: EntryFacts,
          wanted: dict[str, list[str]]) -> list[str]:
    changes = []
    for name in sorted({d for ds in wanted.values() for d in ds}):
        if not (root / name).is_dir():
            changes.append(f"created {name}/")
        for entry_name in ENTRY_NAMES:
            if name not in wanted[entry_name]:
                continue
            content = render_entry(python, facts.config_arg or None, entry_name, name, facts)
            if not _is_current(root / name / entry_name, content.encode(), facts.mtime_ns):
                changes.append(f"wrote {name}/{entry_name}")
    for entry_name in ENTRY_NAMES:
        changes += [f"removed {name}/{entry_name}"
                    for name in sorted(_dirs_with_entry(root, entry_name)
                                       - set(wanted[entry_name]))]
    return changes


def uninstall(root: Path) -> list[str]:
    """Remove hookpack's entries and the directories hookpack created, if empty."""
    created = _read_manifest(root)
    changes: list[str] = []
    for entry in ENTRY_NAMES:
        for name in sorted(_dirs_with_entry(root, entry)):
            changes.extend(_remove_entry(root, name, created, entry))
    for name in sorted(created):
        if _remove_if_empty(root / name):
            changes.append(f"removed {name}/")
            created.discard(name)
    _write_manifest(root, created)
    return changes


def is_entry(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    return MARKER.encode() in head


def _is_current(path: Path, data: bytes, mtime_ns: int | None) -> bool:
    """Same bytes, mode 755 and (when it bakes config facts) the config's mtime."""
    try:
        info = os.stat(path)
        return (path.read_bytes() == data and info.st_mode & 0o777 == 0o755
                and (mtime_ns is None or info.st_mtime_ns == mtime_ns))
    except OSError:
        return False


def _write_if_different(path: Path, content: str, mtime_ns: int | None = None) -> bool:
    """Write atomically (rename) unless current; the entry's mtime becomes the config's
    (``mtime_ns``): the mark that its baked facts still hold (entryscript)."""
    data = content.encode()
    if _is_current(path, data, mtime_ns):
        return False
    if path.exists() and not is_entry(path):
        raise FileExistsError(f"{path} exists and is not hookpack's; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o755)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return True


def _dirs_with_entry(root: Path, entry: str = ENTRY_NAME) -> set[str]:
    if not root.is_dir():
        return set()
    return {d.name for d in root.iterdir()
            if d.is_dir() and (d / entry).exists() and is_entry(d / entry)}


def _remove_entry(root: Path, name: str, created: set[str],
                  entry: str = ENTRY_NAME) -> list[str]:
    (root / name / entry).unlink()
    changes = [f"removed {name}/{entry}"]
    if name in created and _remove_if_empty(root / name):
        created.discard(name)
        changes.append(f"removed {name}/")
    return changes


def _remove_if_empty(directory: Path) -> bool:
    try:
        directory.rmdir()
        return True
    except OSError:
        return False


def _read_manifest(root: Path) -> set[str]:
    try:
        lines = (root / MANIFEST).read_text().split()
    except OSError:
        return set()
    return {line for line in lines if line.endswith((".d",)) and "/" not in line}


def _write_manifest(root: Path, created: set[str]) -> None:
    path = root / MANIFEST
    if not created:
        path.unlink(missing_ok=True)
        return
    path.write_text("".join(f"{name}\n" for name in sorted(created)))

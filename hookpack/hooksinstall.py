"""Lay hookpack's entry scripts out into a Ganeti hooks tree, as a reconcile.

Ganeti runs a file only if it is executable and its name matches ^[a-zA-Z0-9_-]+$
(shared/reference/ganeti-hooks.md), so the entries are `50-hookpack` (the actions),
`00-hookpack-global` and `99-hookpack-global` (global hooks: they sort first in every
`<hpath>-pre.d` and last in every `<hpath>-post.d`), and temporary files start with a
dot (Ganeti lists only visible files). Files that are not hookpack's
entries are never touched; directories hookpack created are listed in a manifest so
`uninstall` removes exactly those (when empty) and nothing else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from hookpack import registry

ENTRY_NAME = "50-hookpack"
GLOBAL_PRE_ENTRY = "00-hookpack-global"
GLOBAL_POST_ENTRY = "99-hookpack-global"
ENTRY_NAMES = (GLOBAL_PRE_ENTRY, ENTRY_NAME, GLOBAL_POST_ENTRY)
MARKER = "# hookpack-entry"
MANIFEST = ".hookpack-created-dirs"
PORTABLE_PYTHON = "/usr/bin/python3"

TEMPLATE = """#!{python} -I
{marker}: installed by `hookpack hooks install`. Ganeti runs it for this hook path and
# phase with a cleared environment; it hands over to hookpack's dispatcher, which runs
# the actions registered here and bounds their run time. Do not edit: reinstall.
import sys

from hookpack.hook import main

sys.exit(main({config}))
"""

GLOBAL_TEMPLATE = """#!{python} -I
{marker}: installed by `hookpack hooks install`. Ganeti runs it for this hook path and
# phase; it runs the operator's global hooks ({global_dir}/ under the hooks
# directory, Ganeti's rules). Nothing to run costs one directory listing. Do not edit:
# reinstall.
import sys

from hookpack.globalhooks import main

sys.exit(main({config}))
"""

# hpaths that get global hooks: every opcode hooks path. config-update is not run
# around an opcode (Ganeti runs it on the master after any configuration write).
GLOBAL_HPATHS = tuple(h for h in registry.GANETI_HPATHS if h != "config-update")


def render_entry(python: str, config: str | None, entry: str = ENTRY_NAME) -> str:
    if entry == ENTRY_NAME:
        return TEMPLATE.format(python=python, marker=MARKER,
                               config=repr(config) if config else "")
    return GLOBAL_TEMPLATE.format(
        python=python, marker=MARKER, config=repr(config) if config else "",
        global_dir="global-pre.d" if entry == GLOBAL_PRE_ENTRY else "global-post.d")


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
            dry_run: bool = False) -> list[str]:
    """Make ``root`` hold exactly hookpack's entries; return what changed (or would).

    Default layout: `default_layout()`. ``dirs``: only the actions' entry, in these
    directories; ``entries``: entry name -> directories (names not given: none).
    """
    wanted = _wanted(dirs, entries)
    if dry_run:
        return _plan(root, python, config, wanted)
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
                content = render_entry(python or sys.executable, config, entry)
                if _write_if_different(directory / entry, content):
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
    return _plan(root, python, config, _wanted(dirs, entries))


def _plan(root: Path, python: str | None, config: str | None,
          wanted: dict[str, list[str]]) -> list[str]:
    changes = []
    for name in sorted({d for ds in wanted.values() for d in ds}):
        if not (root / name).is_dir():
            changes.append(f"created {name}/")
        for entry_name in ENTRY_NAMES:
            if name not in wanted[entry_name]:
                continue
            content = render_entry(python or sys.executable, config, entry_name).encode()
            entry = root / name / entry_name
            try:
                same = (entry.read_bytes() == content
                        and os.stat(entry).st_mode & 0o777 == 0o755)
            except OSError:
                same = False
            if not same:
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


def _write_if_different(path: Path, content: str) -> bool:
    data = content.encode()
    try:
        if path.read_bytes() == data and os.stat(path).st_mode & 0o777 == 0o755:
            return False
    except OSError:
        pass
    if path.exists() and not is_entry(path):
        raise FileExistsError(f"{path} exists and is not hookpack's; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
    try:
        os.write(fd, data)
        os.fchmod(fd, 0o755)
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

"""Lay hookpack's entry scripts out into a Ganeti hooks tree, as a reconcile.

Ganeti runs a file only if it is executable and its name matches ^[a-zA-Z0-9_-]+$
(shared/reference/ganeti-hooks.md), so the entry is `50-hookpack` and temporary files
start with a dot (Ganeti lists only visible files). Files that are not hookpack's
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


def render_entry(python: str, config: str | None) -> str:
    return TEMPLATE.format(python=python, marker=MARKER,
                           config=repr(config) if config else "")


def install(root: Path, *, python: str | None = None, config: str | None = None,
            dirs: Iterable[str] | None = None, dry_run: bool = False) -> list[str]:
    """Make ``root`` hold exactly hookpack's entries; return what changed (or would)."""
    if dry_run:
        return plan_install(root, python=python, config=config, dirs=dirs)
    wanted = sorted(dirs if dirs is not None else registry.layout())
    content = render_entry(python or sys.executable, config)
    changes: list[str] = []
    root.mkdir(parents=True, exist_ok=True)
    created = _read_manifest(root)
    for name in wanted:
        directory = root / name
        if not directory.is_dir():
            directory.mkdir(mode=0o755)
            created.add(name)
            changes.append(f"created {name}/")
        if _write_if_different(directory / ENTRY_NAME, content):
            changes.append(f"wrote {name}/{ENTRY_NAME}")
    for name in sorted(_dirs_with_entry(root) - set(wanted)):
        changes.extend(_remove_entry(root, name, created))
    _write_manifest(root, created)
    return changes


def plan_install(root: Path, *, python: str | None = None, config: str | None = None,
                 dirs: Iterable[str] | None = None) -> list[str]:
    """What `install` would change, without touching anything."""
    wanted = sorted(dirs if dirs is not None else registry.layout())
    content = render_entry(python or sys.executable, config).encode()
    changes = []
    for name in wanted:
        entry = root / name / ENTRY_NAME
        if not (root / name).is_dir():
            changes.append(f"created {name}/")
        try:
            same = entry.read_bytes() == content and os.stat(entry).st_mode & 0o777 == 0o755
        except OSError:
            same = False
        if not same:
            changes.append(f"wrote {name}/{ENTRY_NAME}")
    changes += [f"removed {name}/{ENTRY_NAME}"
                for name in sorted(_dirs_with_entry(root) - set(wanted))]
    return changes


def uninstall(root: Path) -> list[str]:
    """Remove hookpack's entries and the directories hookpack created, if empty."""
    created = _read_manifest(root)
    changes: list[str] = []
    for name in sorted(_dirs_with_entry(root)):
        changes.extend(_remove_entry(root, name, created))
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


def _dirs_with_entry(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return {d.name for d in root.iterdir()
            if d.is_dir() and (d / ENTRY_NAME).exists() and is_entry(d / ENTRY_NAME)}


def _remove_entry(root: Path, name: str, created: set[str]) -> list[str]:
    (root / name / ENTRY_NAME).unlink()
    changes = [f"removed {name}/{ENTRY_NAME}"]
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

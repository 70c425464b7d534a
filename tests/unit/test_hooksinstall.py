from __future__ import annotations

import os
from pathlib import Path

import pytest

from hookpack import registry
from hookpack.hooksinstall import ENTRY_NAME, PORTABLE_PYTHON, install, render_entry, uninstall

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_repo_hooks_d_matches_the_registry():
    """hooks.d/ is generated: `hookpack hooks install --root hooks.d --python /usr/bin/python3`
    (then drop .hookpack-created-dirs)."""
    hooks_d = REPO / "hooks.d"
    expected = {f"{d}/{ENTRY_NAME}": render_entry(PORTABLE_PYTHON, None)
                for d in registry.layout()}
    assert _tree(hooks_d) == expected
    assert all(os.access(hooks_d / name, os.X_OK) for name in expected)


def test_install_is_a_reconcile(tmp_path):
    root = tmp_path / "hooks"
    first = install(root, python="/py", config="/c.toml")
    assert len(first) == 2 * len(registry.layout())
    assert install(root, python="/py", config="/c.toml") == []
    (root / "disk-grow-post.d" / ENTRY_NAME).chmod(0o644)
    assert install(root, python="/py", config="/c.toml") == [
        f"wrote disk-grow-post.d/{ENTRY_NAME}"]
    assert "main('/c.toml')" in (root / "disk-grow-post.d" / ENTRY_NAME).read_text()


def test_dry_run_says_what_install_would_do_and_does_nothing(tmp_path):
    root = tmp_path / "hooks"
    planned = install(root, python="/py", dry_run=True)
    assert not root.exists()
    assert planned == install(root, python="/py")
    assert install(root, python="/py", dry_run=True) == []


def test_install_removes_stale_entries_but_nothing_foreign(tmp_path):
    root = tmp_path / "hooks"
    (root / "old-post.d").mkdir(parents=True)
    (root / "old-post.d" / "10-operator").write_text("#!/bin/sh\n")
    install(root, python="/py", dirs=["old-post.d", "disk-grow-post.d"])
    changes = install(root, python="/py", dirs=["disk-grow-post.d"])
    assert changes == [f"removed old-post.d/{ENTRY_NAME}"]
    assert (root / "old-post.d" / "10-operator").exists()


def test_install_refuses_to_overwrite_a_foreign_file(tmp_path):
    root = tmp_path / "hooks"
    (root / "disk-grow-post.d").mkdir(parents=True)
    (root / "disk-grow-post.d" / ENTRY_NAME).write_text("#!/bin/sh\necho mine\n")
    with pytest.raises(FileExistsError, match="is not hookpack's"):
        install(root, python="/py", dirs=["disk-grow-post.d"])


def test_uninstall_restores_the_tree_as_it_was(tmp_path):
    root = tmp_path / "hooks"
    (root / "instance-start-post.d").mkdir(parents=True)
    (root / "instance-start-post.d" / "10-operator").write_text("#!/bin/sh\n")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    install(root, python="/py")
    uninstall(root)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert uninstall(root) == []

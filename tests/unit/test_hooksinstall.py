from __future__ import annotations

import os
from pathlib import Path

import pytest

from hookpack import registry
from hookpack.hooksinstall import (
    ENTRY_NAME,
    GLOBAL_POST_ENTRY,
    GLOBAL_PRE_ENTRY,
    PORTABLE_PYTHON,
    default_layout,
    install,
    portable_facts,
    render_entry,
    uninstall,
)

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_repo_hooks_d_matches_the_registry():
    """hooks.d/ is generated: `install(Path("hooks.d"), python=PORTABLE_PYTHON,
    facts=portable_facts())` (then drop .hookpack-created-dirs)."""
    hooks_d = REPO / "hooks.d"
    expected = {f"{d}/{entry}": render_entry(PORTABLE_PYTHON, None, entry, d, portable_facts())
                for entry, dirs in default_layout().items() for d in dirs}
    assert _tree(hooks_d) == expected
    assert all(os.access(hooks_d / name, os.X_OK) for name in expected)


def test_install_is_a_reconcile(tmp_path):
    root = tmp_path / "hooks"
    first = install(root, python="/py", config="/c.toml")
    layout = default_layout()
    directories = {d for dirs in layout.values() for d in dirs}
    assert len(first) == len(directories) + sum(len(dirs) for dirs in layout.values())
    assert install(root, python="/py", config="/c.toml") == []
    (root / "disk-grow-post.d" / ENTRY_NAME).chmod(0o644)
    assert install(root, python="/py", config="/c.toml") == [
        f"wrote disk-grow-post.d/{ENTRY_NAME}"]
    assert "hp_config_arg='/c.toml'" in (root / "disk-grow-post.d" / ENTRY_NAME).read_text()


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


def test_global_entries_sort_first_in_pre_and_last_in_post_of_every_opcode_hpath(tmp_path):
    root = tmp_path / "hooks"
    install(root, python="/py", config="/c.toml")
    for hpath in registry.GANETI_HPATHS:
        pre = sorted(os.listdir(root / f"{hpath}-pre.d"))
        post = sorted(os.listdir(root / f"{hpath}-post.d"))
        if hpath == "config-update":  # not run around an opcode
            assert GLOBAL_PRE_ENTRY not in pre and GLOBAL_POST_ENTRY not in post
            continue
        assert pre[0] == GLOBAL_PRE_ENTRY and GLOBAL_POST_ENTRY not in pre
        assert post[-1] == GLOBAL_POST_ENTRY and GLOBAL_PRE_ENTRY not in post
        assert ENTRY_NAME in pre and ENTRY_NAME in post
    text = (root / "disk-grow-pre.d" / GLOBAL_PRE_ENTRY).read_text()
    assert "hp_kind=global" in text and "hp_config_arg='/c.toml'" in text
    assert not (root / "global-pre.d").exists()  # the operator's, never hookpack's


def test_reconcile_removes_global_entries_no_longer_wanted_and_uninstall_all(tmp_path):
    root = tmp_path / "hooks"
    install(root, python="/py")
    changes = install(root, python="/py", entries={ENTRY_NAME: ["disk-grow-post.d"],
                                                   GLOBAL_POST_ENTRY: ["disk-grow-post.d"]})
    assert f"removed disk-grow-pre.d/{GLOBAL_PRE_ENTRY}" in changes
    assert f"removed disk-grow-post.d/{ENTRY_NAME}" not in changes
    assert sorted(os.listdir(root / "disk-grow-post.d")) == [ENTRY_NAME, GLOBAL_POST_ENTRY]
    assert not (root / "disk-grow-pre.d").exists()  # created by hookpack, now empty
    uninstall(root)
    assert sorted(p.name for p in root.iterdir()) == []

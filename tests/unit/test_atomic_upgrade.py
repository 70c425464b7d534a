"""An upgrade never shows a hook a half-installed hookpack (issue 17).

The install/upgrade commands are read from docs/operator-guide.md (the block after
`<!-- install-commands -->`) and run as written, with the paths moved into a temp dir:
two real wheels of different builds, each installed into its own
versions/<id>/venv, `current` switched with one rename(2). Meanwhile hooks run in a
tight loop (real processes, Ganeti's RunParts rules through the emulator); every run
must succeed with the record action's line, and each must have used the old or the
new version as a whole (the record carries the version that ran).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hookpack.emulator import run_hooks

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operator-guide.md"


def documented_commands() -> str:
    text = GUIDE.read_text()
    block = re.search(r"<!-- install-commands -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/operator-guide.md lost its install-commands block"
    return block.group(1)


def _wheel(tmp: Path, version: str) -> Path:
    """A wheel of this checkout with ``version`` (a different build of hookpack)."""
    src = tmp / f"src-{version}"
    shutil.copytree(REPO / "hookpack", src / "hookpack",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pyproject = src / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"',
                                                       f'version = "{version}"', 1))
    init = src / "hookpack" / "__init__.py"
    init.write_text(init.read_text().replace('"0.1.0"', f'"{version}"'))
    out = tmp / f"wheel-{version}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "-w", str(out), str(src)], check=True)
    [wheel] = out.glob("hookpack-*.whl")
    return wheel


def _run_documented(home: Path, hooks: Path, config: Path, wheel: Path) -> None:
    script = (documented_commands()
              .replace("H=/opt/hookpack", f"H={home}")
              .replace("--root /etc/ganeti/hooks", f"--root {hooks} --entry-config {config}"))
    env = {**os.environ, "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(["/bin/sh", "-ec", script], cwd=wheel.parent, env=env, check=True,
                   capture_output=True)


def test_hooks_in_a_tight_loop_see_the_old_or_the_new_version(tmp_path, write_config,
                                                               sample):
    old, new = _wheel(tmp_path, "0.1.0"), _wheel(tmp_path, "0.1.1.dev7")
    records = tmp_path / "record.jsonl"
    config = write_config(f'[record]\nenabled = true\npath = "{records}"\n')
    home, hooks = tmp_path / "opt-hookpack", tmp_path / "hooks"
    _run_documented(home, hooks, config, old)
    assert (home / "current").is_symlink()
    entry = (hooks / "instance-start-post.d" / "50-hookpack").read_text()
    assert f"hp_python='{home}/current/venv/bin/python'" in entry

    stale = home / "versions" / "0.0.9-000000000000"  # an older version: removed by the upgrade
    stale.mkdir()
    environ, _ = sample("instance-start-post-node1")
    results, stop = [], threading.Event()

    def loop() -> None:
        while not stop.is_set():
            results.extend(run_hooks(hooks, "instance-start", "post", environ))

    runner = threading.Thread(target=loop)
    runner.start()
    try:
        _run_documented(home, hooks, config, new)
        switched = len(results)
        while len(results) < switched + 20:  # runs after the switch too
            stop.wait(0.05)
    finally:
        stop.set()
        runner.join()
    actions = [r for r in results if r.name.endswith("50-hookpack")]
    failed = [r for r in actions if r.status != "success" or not
              r.output.startswith("hookpack record: ")]
    versions = [json.loads(line)["version"] for line in records.read_text().splitlines()]
    print(f"{len(actions)} runs, {len(failed)} failed; versions used: "
          f"{ {v: versions.count(v) for v in sorted(set(versions))} }")
    assert failed == []
    assert len(versions) == len(actions)
    assert set(versions) == {"0.1.0", "0.1.1.dev7"}
    assert versions == sorted(versions, key=lambda v: v != "0.1.0")  # old, then new
    # The previous version stays until the next upgrade; older ones go.
    assert sorted(p.name.split("-")[0] for p in (home / "versions").iterdir()) == [
        "0.1.0", "0.1.1.dev7"]
    assert os.readlink(home / "current").startswith("versions/0.1.1.dev7-")

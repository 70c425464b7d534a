"""The role's ``hookpack_newest_wheel`` filter orders wheels by version, not by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PLUGIN = (Path(__file__).resolve().parents[2]
          / "ansible/roles/hookpack/filter_plugins/hookpack_wheels.py")
spec = importlib.util.spec_from_file_location("hookpack_wheels", PLUGIN)
assert spec and spec.loader
wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wheels)


def test_highest_version_wins_where_names_sort_the_other_way():
    paths = ["/b/hookpack-0.9.0-py3-none-any.whl", "/b/hookpack-0.10.0-py3-none-any.whl",
             "/b/hookpack-0.10.0rc1-py3-none-any.whl"]
    assert sorted(paths)[-1] != "/b/hookpack-0.10.0-py3-none-any.whl"  # by name: wrong
    assert wheels.newest_wheel(paths) == "/b/hookpack-0.10.0-py3-none-any.whl"


def test_a_file_that_is_no_wheel_is_refused():
    with pytest.raises(ValueError, match="not a wheel file name"):
        wheels.newest_wheel(["/b/hookpack.tar.gz"])
    with pytest.raises(ValueError, match="no wheel"):
        wheels.newest_wheel([])


def test_the_filter_is_registered():
    assert wheels.FilterModule().filters()["hookpack_newest_wheel"] is wheels.newest_wheel

from __future__ import annotations

import pytest

from hookpack.errors import BadInput
from hookpack.validate import device_index, instance_name, interface_name


@pytest.mark.parametrize("name", ["inst1.example.test", "web-1", "a", "x_y.z", "A1" * 10])
def test_good_instance_names(name):
    assert instance_name(name) == name


@pytest.mark.parametrize("name", [
    "", "../etc/passwd", "a/b", "..", ".", "a..b", "a b", "a;rm -rf /", "$(id)", "a\nb",
    "x\x00y", "ünïcode.example", "-lead", "a" * 254, "a.", ".a", "`id`", "a|b"])
def test_bad_instance_names(name):
    with pytest.raises(BadInput):
        instance_name(name)


@pytest.mark.parametrize(("value", "index"), [(0, 0), ("3", 3), (63, 63), ("07", 7)])
def test_good_indexes(value, index):
    assert device_index(value) == index


@pytest.mark.parametrize("value", [-1, 64, "64", "-1", "1.0", "", "a", True, None, "9999"])
def test_bad_indexes(value):
    with pytest.raises(BadInput):
        device_index(value)


def test_interface_names():
    assert interface_name("tap12") == "tap12"
    for bad in ("", "tap/1", "..", "a" * 16, "tap 1"):
        with pytest.raises(BadInput):
            interface_name(bad)

"""pytest plugin: run the shaping engineer's netns tests with the classifier forced to fw.

``tests/shaping/conftest.py``'s ``Shaper.write_config`` defaults to
``classifier = "classify"`` (= auto: cls_bpf); loaded with
``-p tests.shaping_guest.force_fw`` inside the stock-kernel guest, the default
becomes ``fw``. A test that passes ``classifier=`` itself keeps its choice.
Every CLI result of a forced Shaper that names its classifier is checked to be
fw, and the count is printed at the end (``force_fw: N ...``), so a run where the
forcing did not take effect cannot pass unnoticed.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

CHECKED = {"fw": 0, "patched": 0}


def _patch(shaper_cls: Any) -> None:
    if getattr(shaper_cls, "hp_force_fw_patched", False):
        return
    write_config, cli = shaper_cls.write_config, shaper_cls.cli

    def write_config_fw(self: Any, extra: str = "", **shaping: object) -> None:
        self.hp_forced_fw = "classifier" not in shaping
        shaping.setdefault("classifier", "fw")
        write_config(self, extra, **shaping)

    def cli_checked(self: Any, *args: str, check: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = cli(self, *args, check=check)
        if getattr(self, "hp_forced_fw", False) and isinstance(out, dict) and "classifier" in out:
            assert "mark -> class: cls_fw " in str(out["classifier"]), out
            CHECKED["fw"] += 1
        return out

    shaper_cls.write_config = write_config_fw
    shaper_cls.cli = cli_checked
    shaper_cls.hp_force_fw_patched = True
    CHECKED["patched"] += 1


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """After collection pytest has imported tests/shaping/conftest.py (under whatever
    module name its import mode chose): patch the Shaper class of that very module."""
    for mod in list(sys.modules.values()):
        path = str(getattr(mod, "__file__", "") or "")
        if path.endswith("tests/shaping/conftest.py") and hasattr(mod, "Shaper"):
            _patch(mod.Shaper)
    if not CHECKED["patched"]:
        raise pytest.UsageError("force_fw: tests/shaping/conftest.py Shaper not found")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(f"force_fw: {CHECKED['fw']} CLI results checked as fw")

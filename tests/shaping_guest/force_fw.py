"""pytest plugin: run the shaping engineer's netns tests with the classifier forced to fw.

``tests/shaping/conftest.py``'s ``Shaper.write_config`` defaults to
``classifier = "classify"`` (the host kernel has no cls_fw); loaded with
``-p tests.shaping_guest.force_fw`` inside the stock-kernel guest, the default
becomes ``fw``. A test that passes ``classifier=`` itself keeps its choice.
"""

from __future__ import annotations

from typing import Any

from tests.shaping import conftest as shaping_conftest

_original = shaping_conftest.Shaper.write_config


def _write_config_fw(self: Any, extra: str = "", **shaping: object) -> None:
    shaping.setdefault("classifier", "fw")
    _original(self, extra, **shaping)


shaping_conftest.Shaper.write_config = _write_config_fw  # type: ignore[method-assign]

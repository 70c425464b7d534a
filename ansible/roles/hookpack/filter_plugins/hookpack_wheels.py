"""Filter ``hookpack_newest_wheel``: the wheel with the highest version (PEP 440), not the
last by name (by name, hookpack-0.10.0 sorts before hookpack-0.9.0 and 1.0.0rc1 after
1.0.0)."""

from __future__ import annotations

import os

from packaging.utils import InvalidWheelFilename, parse_wheel_filename


def newest_wheel(paths: list[str]) -> str:
    """The path among ``paths`` (``*.whl``) whose wheel has the highest version."""
    versioned = []
    for path in paths:
        try:
            _name, version, _build, _tags = parse_wheel_filename(os.path.basename(path))
        except InvalidWheelFilename as err:
            raise ValueError(f"{path}: not a wheel file name ({err})") from None
        versioned.append((version, path))
    if not versioned:
        raise ValueError("no wheel to choose from")
    return max(versioned)[1]


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"hookpack_newest_wheel": newest_wheel}

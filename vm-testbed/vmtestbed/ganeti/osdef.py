"""A do-nothing Ganeti OS definition: the guest boots from kernel_path/initrd_path, not disk."""

from __future__ import annotations

from pathlib import Path

OS_NAME = "noop"
VARIANT = "default"
OS_SPEC = f"{OS_NAME}+{VARIANT}"
_SCRIPTS = ("create", "import", "export", "rename", "verify")


def write(os_dir: Path) -> Path:
    """Write the definition into ``os_dir/noop`` and return that directory."""
    d = os_dir / OS_NAME
    d.mkdir(parents=True, exist_ok=True)
    (d / "ganeti_api_version").write_text("20\n")
    (d / "variants.list").write_text(f"{VARIANT}\n")
    (d / "parameters.list").write_text("")
    for name in _SCRIPTS:
        script = d / name
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    return d

"""`promtool check metrics` (Debian's prometheus package) on a metrics text."""

from __future__ import annotations

import shutil
import subprocess


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install the Debian package prometheus (scripts/setup)"
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)


def check_with_promtool(text: str) -> None:
    """Fail unless promtool passes the text with no problem at all (lint included)."""
    proc = promtool_check(text)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        f"promtool check metrics: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"

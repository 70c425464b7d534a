"""Errors of the Ganeti lab."""

from __future__ import annotations

import subprocess

from vmtestbed.errors import TestbedError


class LabError(TestbedError):
    """Base error of the Ganeti lab: says what failed and what to do."""


class CommandFailed(LabError):
    """A command run for the lab (on the host or on a node) failed."""

    def __init__(self, where: str, proc: subprocess.CompletedProcess[str]) -> None:
        self.where = where
        self.proc = proc
        argv = " ".join(str(a) for a in proc.args)
        detail = (proc.stderr or proc.stdout or "").strip().splitlines()[-12:]
        super().__init__(
            f"{where}: `{argv}` exited {proc.returncode}"
            + ("\n  " + "\n  ".join(detail) if detail else "")
        )

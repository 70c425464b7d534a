"""Confirmation for destructive commands (`outbox drop --all`, `shaping clear --all`).

`--yes` goes ahead. Without it, an operator at a terminal is asked and must type `yes`;
without a terminal (scripts, units, Ansible) the command refuses and says to add `--yes`,
so nothing destructive happens by accident in a pipeline.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from hookpack.errors import BadInput


def confirm(what: str, yes: bool, stdin: TextIO | None = None,
            stderr: TextIO | None = None) -> None:
    """Return when ``what`` may go ahead; raise BadInput (nothing done) otherwise."""
    if yes:
        return
    stdin = stdin if stdin is not None else sys.stdin
    stderr = stderr if stderr is not None else sys.stderr
    if stdin is None or not stdin.isatty():
        raise BadInput(f"{what}: refusing without confirmation (no terminal to ask on); "
                       "add --yes")
    stderr.write(f"{what}. Type yes to go on: ")
    stderr.flush()
    if stdin.readline().strip() != "yes":
        raise BadInput(f"{what}: not confirmed; nothing done")


def add_yes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

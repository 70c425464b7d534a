"""`gnt-instance list` as rows of fields, and the CLI of the `sync` commands that read
Ganeti on the master to catch a service up."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from hookpack.errors import ActionError, BadInput

if TYPE_CHECKING:
    import argparse

SEPARATOR = "|"
TIMEOUT = 120.0


def instance_rows(fields: Sequence[str],
                  run: Callable[..., Any] = subprocess.run) -> list[list[str]]:
    """One row per instance: the ``fields`` Ganeti gives, as text, in that order."""
    argv = ["gnt-instance", "list", "--no-headers", f"--separator={SEPARATOR}",
            "-o", ",".join(fields)]
    try:
        done = run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ActionError(f"cannot run gnt-instance list: {err}; run this on the master") \
            from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ActionError(f"gnt-instance list failed ({last}); run this on the master")
    return split_rows(done.stdout, len(fields))


def split_rows(text: str, width: int) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.strip():
            cells = [c.strip() for c in line.split(SEPARATOR, width - 1)]
            rows.append(cells + [""] * (width - len(cells)))
    return rows


def add_sync_parser(subparsers: Any, service: str, gone: str,
                    handler: Callable[[argparse.Namespace], int]) -> None:
    """`... sync [INSTANCE|--all] [--dry-run] [--json]`; ``gone``: what --all also does."""
    from hookpack.config import add_config_arg

    p = subparsers.add_parser("sync", help=f"bring {service} in step with Ganeti's instances "
                              "(on the master), e.g. after a failed post hook")
    p.add_argument("instance", nargs="?", metavar="INSTANCE", help="only this instance")
    p.add_argument("--all", action="store_true", help=f"every instance, and {gone}")
    p.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    add_config_arg(p)
    p.set_defaults(handler=handler)


def sync_target(ns: argparse.Namespace) -> str | None:
    """The instance a sync names (validated), or None for --all; exactly one is given."""
    from hookpack.validate import instance_name

    if bool(ns.instance) == bool(ns.all):
        raise BadInput("name one INSTANCE or give --all (not both)")
    return instance_name(ns.instance) if ns.instance else None

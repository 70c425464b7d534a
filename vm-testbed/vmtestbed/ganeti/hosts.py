"""The lab's names in ``/etc/hosts``, each line tagged so ``down`` removes only ours.

Ganeti refuses a node whose name resolves to a loopback address, and nodes find each
other by name: the names must resolve, the same way in every namespace.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from vmtestbed.ganeti.layout import HOSTS_TAG

HOSTS = Path("/etc/hosts")


def add(entries: Iterable[tuple[str, str]], path: Path = HOSTS) -> None:
    """Add ``(ip, fqdn)`` entries (with the short name as alias), replacing older lab lines."""
    keep = _without_ours(path.read_text())
    lines = [f"{ip}\t{fqdn} {fqdn.split('.')[0]}\t{HOSTS_TAG}" for ip, fqdn in entries]
    # write in place: /etc/hosts may be a bind mount, which a rename would not replace
    path.write_text(keep + "".join(line + "\n" for line in lines))


def remove(path: Path = HOSTS) -> bool:
    """Remove the lab's lines; return whether there were any."""
    text = path.read_text()
    keep = _without_ours(text)
    if keep != text:
        path.write_text(keep)
        return True
    return False


def _without_ours(text: str) -> str:
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.rstrip().endswith(HOSTS_TAG)]
    out = "".join(kept)
    if out and not out.endswith("\n"):
        out += "\n"
    return out

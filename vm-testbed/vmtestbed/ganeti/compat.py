"""The compatibility table (docs/compatibility.md), generated from what the labs recorded.

Lab tests note facts as they observe them (:func:`note`: the hook table of each
operation, who resized QEMU after grow-disk, how hotplug is asked for, ...), per Ganeti
version. At the end of each version's tests, ``tests/ganeti/test_zy_compat.py`` compares
what that lab recorded with the committed ``docs/compat/ganeti-<version>.json``: a
Ganeti that behaves differently fails the run until the file (and the table made from
it) is regenerated from a lab run (``VMTESTBED_COMPAT_UPDATE=1``, then ``python -m
vmtestbed.ganeti.compat render``).
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
RECORDS = REPO / "docs" / "compat"
TABLE = REPO / "docs" / "compatibility.md"

# Every fact the labs record, in table order: key -> (group, what it says).
FACTS: dict[str, tuple[str, str]] = {
    "ganeti": ("Versions", "Ganeti (package)"),
    "qemu": ("Versions", "QEMU"),
    "python": ("Versions", "Python on the node"),
    "qemu.disk_identity": ("QEMU", "How QEMU names a disk (what hookpack resizes)"),
    "hooks.instance-add": ("Hooks: where they run", "instance-add"),
    "hooks.disk-grow": ("Hooks: where they run", "disk-grow"),
    "hooks.instance-migrate": ("Hooks: where they run", "instance-migrate"),
    "hooks.instance-failover": ("Hooks: where they run", "instance-failover"),
    "hooks.instance-reboot": ("Hooks: where they run", "instance-reboot"),
    "hooks.instance-stop": ("Hooks: where they run", "instance-stop"),
    "hooks.instance-start": ("Hooks: where they run", "instance-start"),
    "hooks.instance-remove": ("Hooks: where they run", "instance-remove"),
    "hooks.instance-move": ("Hooks: where they run", "instance-move"),
    "action.shaping": ("hookpack's actions", "shaping"),
    "action.pinning": ("hookpack's actions", "pinning"),
    "action.announce": ("hookpack's actions", "announce"),
    "action.dns_netbox": ("hookpack's actions", "dns and netbox"),
    "action.policy": ("hookpack's actions", "policy (pre-hook veto)"),
    "action.global_hooks": ("hookpack's actions", "global hooks"),
    "action.status": ("hookpack's actions", "`hookpack status`"),
    "action.doctor": ("hookpack's actions", "`hookpack doctor`"),
    "action.broken_install": ("hookpack's actions", "a broken install"),
    "disk-grow.storage": ("disk-grow", "Ganeti grows a file disk"),
    "disk-grow.qemu": ("disk-grow", "The running QEMU learns the new size from"),
    "disk-grow.hookpack": ("disk-grow", "hookpack's post hook"),
    "hotplug.asked": ("Hotplug", "Ganeti hotplugs on `gnt-instance modify`"),
    "hotplug.nic_add": ("Hotplug", "NIC hot-added: hookpack shaping"),
    "hotplug.disk_add": ("Hotplug", "Disk hot-added, then grown: the guest sees"),
    "hotplug.disk_remove": ("Hotplug", "Disk 0 hot-removed, disk 1 (now 0) grown"),
    "rename.options": ("Other operations", "`gnt-instance rename` without name checks"),
    "modify.vcpus": ("Other operations", "`modify -B vcpus` + full reboot: pinning"),
    "move": ("Other operations", "`gnt-instance move`: shaping"),
}

_RECORDED: dict[str, dict[str, str]] = {}


def note(version: str, key: str, value: str) -> None:
    """Record ``key`` (one of :data:`FACTS`) as observed on the ``version`` lab."""
    if key not in FACTS:
        raise KeyError(f"{key!r} is not a fact of the compatibility table")
    _RECORDED.setdefault(version, {})[key] = value


def recorded(version: str) -> dict[str, str]:
    return dict(_RECORDED.get(version, {}))


def record_file(version: str, root: Path = RECORDS) -> Path:
    return root / f"ganeti-{version}.json"


def load(version: str, root: Path = RECORDS) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(record_file(version, root).read_text())
    except FileNotFoundError:
        return {}
    return data


def save(version: str, facts: Mapping[str, str], root: Path = RECORDS) -> Path:
    path = record_file(version, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = {k: facts[k] for k in FACTS if k in facts}
    path.write_text(json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")
    return path


def render(versions: Mapping[str, Mapping[str, str]]) -> str:
    """The Markdown table: a row per fact, a column per version."""
    names = sorted(versions)
    intro = (
        "What each Ganeti version does itself and what hookpack does on it, as the two "
        "vm-testbed labs recorded it: Ganeti 3.0 from Debian 12's packages, 3.1 from "
        "Debian 13's (each node a chroot into a Debian 13 tree), each with its own QEMU. "
        "The lab tests note each fact as they observe it; CI fails when a lab records "
        "something else than `docs/compat/ganeti-<version>.json` says "
        "(`tests/ganeti/test_zy_compat.py`). Hook rows: the nodes that ran hookpack's "
        "entry, by their part in the operation (the lab's instances use file storage: "
        "no secondaries).")
    lines = [
        "# Compatibility: Ganeti 3.0 and 3.1",
        "",
        "<!-- generated by `python -m vmtestbed.ganeti.compat render` from docs/compat/"
        "*.json; do not edit -->",
        "",
        *textwrap.wrap(intro, 88, break_on_hyphens=False),
    ]
    group = None
    for key, (g, what) in FACTS.items():
        if g != group:
            group = g
            lines += ["", f"## {g}", "", "| | " + " | ".join(f"Ganeti {v}" for v in names)
                      + " |", "|---|" + "---|" * len(names)]
        cells = [_cell(versions[v].get(key, "(not recorded)")) for v in names]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_committed(root: Path = RECORDS) -> str:
    versions = {p.stem.removeprefix("ganeti-"): load(p.stem.removeprefix("ganeti-"), root)
                for p in sorted(root.glob("ganeti-*.json"))}
    return render(versions)


def main(argv: list[str]) -> int:
    if argv != ["render"]:
        print("usage: python -m vmtestbed.ganeti.compat render", file=sys.stderr)
        return 2
    TABLE.write_text(render_committed())
    print(TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
